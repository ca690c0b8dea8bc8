//! `mbarrier` objects in shared memory, and the happens-before order they give the race
//! detector.
//!
//! An mbarrier (PTX ISA, "Parallel Synchronization and Communication Instructions: mbarrier")
//! counts the arrivals still due in its current phase and a transaction count (bytes that
//! asynchronous copies still owe it). The phase completes when both reach zero: the phase
//! number advances and the arrival count starts again from the count given at `init`.
//! `try_wait.parity p` succeeds once the phase whose parity is `p` has completed, that is
//! while the current phase's parity differs from `p`.
//!
//! Ordering is tracked with vector clocks. Every warp, and every mbarrier as the stand-in for
//! the asynchronous copies that complete on it, is one component. An arrive releases the
//! arriving warp's clock into the barrier's current phase and then ticks the warp's own
//! component; a successful wait acquires the clock of the phase it observed. An access
//! recorded at component `c` with clock `t` happens before the accesses of a warp whose clock
//! has `c >= t`. `bar.sync` orders everything by itself (the race detector's epochs).

/// The vector clocks of one CTA: one per warp, one per agent (each mbarrier's copies).
#[derive(Default)]
pub struct Clocks {
    /// Clock of each component (warps first, then agents), each as long as `len`.
    of: Vec<Vec<u32>>,
    /// Number of components.
    len: usize,
}

impl Clocks {
    /// Fresh clocks for `warps` warps: each warp's own component is 1, every other 0.
    pub fn reset(&mut self, warps: usize) {
        self.len = warps;
        self.of = (0..warps)
            .map(|w| {
                let mut v = vec![0; warps];
                v[w] = 1;
                v
            })
            .collect();
    }

    /// Adds a component (an agent) and returns its index.
    pub fn add_component(&mut self) -> usize {
        let c = self.len;
        self.len += 1;
        for v in &mut self.of {
            v.push(0);
        }
        let mut own = vec![0; self.len];
        own[c] = 1;
        self.of.push(own);
        c
    }

    /// Component `c`'s own time.
    pub fn now(&self, c: usize) -> u32 {
        self.of[c][c]
    }

    /// Whether an access of component `by` at time `t` happens before what component `c`
    /// does now.
    pub fn ordered(&self, by: usize, t: u32, c: usize) -> bool {
        by == c || self.of[c].get(by).is_some_and(|&seen| seen >= t)
    }

    /// Component `c`'s clock, to be released into a barrier.
    pub fn clock(&self, c: usize) -> &[u32] {
        &self.of[c]
    }

    /// Ticks component `c`'s own time (after a release).
    pub fn tick(&mut self, c: usize) {
        self.of[c][c] += 1;
    }

    /// Component `c` acquires `other` (a released clock).
    pub fn acquire(&mut self, c: usize, other: &[u32]) {
        join(&mut self.of[c], other);
    }

    /// Number of components.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no components.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `into = max(into, other)` component by component (a shorter clock is zero beyond its end).
pub fn join(into: &mut Vec<u32>, other: &[u32]) {
    if into.len() < other.len() {
        into.resize(other.len(), 0);
    }
    for (a, &b) in into.iter_mut().zip(other) {
        *a = (*a).max(b);
    }
}

/// Largest arrival count `mbarrier.init` accepts (2^20 - 1).
pub const MAX_COUNT: u32 = (1 << 20) - 1;

/// The largest tx-count, either way.
pub const MAX_TX: i64 = (1 << 20) - 1;

/// One initialised mbarrier.
#[derive(Clone, Debug)]
pub struct Mbarrier {
    /// Arrivals per phase, from `init`.
    pub expected: u32,
    /// Arrivals still due in the current phase.
    pub pending: u32,
    /// Transaction count of the current phase: `expect_tx` adds, `complete_tx` takes away.
    pub tx: i64,
    /// Completed phases (the current phase's number).
    pub phase: u32,
    /// The agent component of the copies that complete on this barrier.
    pub agent: usize,
    /// Join of what was released into the current phase.
    pub clock: Vec<u32>,
    /// What the last completed phase released.
    pub done_clock: Vec<u32>,
}

impl Mbarrier {
    /// `mbarrier.init` with `count` arrivals per phase.
    pub fn new(count: u64, agent: usize) -> Result<Self, String> {
        if count == 0 || count > MAX_COUNT as u64 {
            return Err(format!(
                "mbarrier.init with a count of {count}: it must be 1 to {MAX_COUNT}"
            ));
        }
        Ok(Mbarrier {
            expected: count as u32,
            pending: count as u32,
            tx: 0,
            phase: 0,
            agent,
            clock: Vec::new(),
            done_clock: Vec::new(),
        })
    }

    /// `expect_tx(bytes)`: the current phase also waits for `bytes` more. An error when the
    /// pending count leaves its range.
    pub fn expect_tx(&mut self, bytes: u64) -> Result<(), String> {
        self.tx += bytes.min(1 << 40) as i64;
        self.check_tx("expect_tx", bytes)
    }

    /// The PTX ISA bounds the tx-count to +-(2^20 - 1); past that the hardware's behaviour
    /// is undefined.
    fn check_tx(&self, what: &str, bytes: u64) -> Result<(), String> {
        if self.tx.abs() > MAX_TX {
            return Err(format!(
                "mbarrier {what} of {bytes} bytes leaves the phase's tx-count at {}, outside \
                 the range +-{MAX_TX} the PTX ISA allows",
                self.tx
            ));
        }
        Ok(())
    }

    /// An arrive of `count` with `released` (the arriving warp's clock), after any
    /// `expect_tx` of the same instruction. An error if the phase had fewer arrivals due.
    pub fn arrive(&mut self, count: u32, released: &[u32]) -> Result<(), String> {
        if count > self.pending {
            return Err(format!(
                "mbarrier arrive of {count} when the current phase (phase {}) has {} of its {} \
                 arrivals left",
                self.phase, self.pending, self.expected
            ));
        }
        self.pending -= count;
        join(&mut self.clock, released);
        self.complete_if_done();
        Ok(())
    }

    /// `complete_tx(bytes)` from an asynchronous copy, carrying `released` (the copy's
    /// agent clock).
    pub fn complete_tx(&mut self, bytes: u64, released: &[u32]) -> Result<(), String> {
        self.tx -= bytes.min(1 << 40) as i64;
        self.check_tx("complete_tx", bytes)?;
        join(&mut self.clock, released);
        self.complete_if_done();
        Ok(())
    }

    fn complete_if_done(&mut self) {
        if self.pending == 0 && self.tx == 0 {
            self.phase += 1;
            self.pending = self.expected;
            self.done_clock = std::mem::take(&mut self.clock);
        }
    }

    /// `test_wait.parity` / `try_wait.parity`: whether the phase of parity `parity` has
    /// completed (the current phase has the other parity).
    pub fn parity_done(&self, parity: u64) -> bool {
        u64::from(self.phase & 1) != (parity & 1)
    }

    /// The state an arrive returns (opaque to the program): the phase it arrived in.
    pub fn state(&self) -> u64 {
        u64::from(self.phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ISA's rule for a phase: it completes when the pending arrival count and the
    /// transaction count are both zero, whatever order they reach it in.
    #[test]
    fn phases_complete_when_arrivals_and_transactions_are_both_done() {
        // (count, steps, phase after each step); a step is ('a', n) arrive n, ('e', n)
        // expect_tx n, ('c', n) complete_tx n.
        #[allow(clippy::type_complexity)]
        let table: &[(u64, &[(char, u64)], &[u32])] = &[
            (1, &[('a', 1), ('a', 1)], &[1, 2]),
            (2, &[('a', 1), ('a', 1), ('a', 2)], &[0, 1, 2]),
            // arrive.expect_tx then the copy's bytes (the TMA producer's pattern).
            (
                1,
                &[('e', 64), ('a', 1), ('c', 32), ('c', 32)],
                &[0, 0, 0, 1],
            ),
            // The copy may land before the arrive that expects it: tx goes negative.
            (1, &[('c', 64), ('e', 64), ('a', 1)], &[0, 0, 1]),
            // Arrivals done but bytes still owed: the phase waits.
            (
                2,
                &[('e', 16), ('a', 2), ('c', 16), ('a', 1)],
                &[0, 0, 1, 1],
            ),
        ];
        for (count, steps, phases) in table {
            let mut m = Mbarrier::new(*count, 0).unwrap();
            for (i, &(kind, n)) in steps.iter().enumerate() {
                match kind {
                    'a' => m.arrive(n as u32, &[]).unwrap(),
                    'e' => m.expect_tx(n).unwrap(),
                    _ => m.complete_tx(n, &[]).unwrap(),
                }
                assert_eq!(m.phase, phases[i], "count {count}, step {i} of {steps:?}");
            }
        }
    }

    /// The tx-count stays within +-(2^20 - 1) whichever way it goes.
    #[test]
    fn the_tx_count_stays_within_its_range() {
        let mut m = Mbarrier::new(1, 0).unwrap();
        m.expect_tx(MAX_TX as u64).unwrap();
        let e = m.expect_tx(1).unwrap_err();
        assert!(
            e.contains("expect_tx of 1 bytes") && e.contains("1048576"),
            "{e}"
        );
        let mut m = Mbarrier::new(1, 0).unwrap();
        m.complete_tx(MAX_TX as u64, &[]).unwrap();
        let e = m.complete_tx(1, &[]).unwrap_err();
        assert!(e.contains("complete_tx") && e.contains("-1048576"), "{e}");
        // A huge count is an error, not an overflow.
        let e = Mbarrier::new(1, 0)
            .unwrap()
            .expect_tx(u64::MAX)
            .unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn parity_waits_succeed_for_the_phase_just_completed_only() {
        let mut m = Mbarrier::new(1, 0).unwrap();
        // (phase, parity 0 done, parity 1 done): in phase 0 the "preceding" phase of
        // parity 1 counts as completed, which is why producers start waiting on parity 1.
        let table = [(0, false, true), (1, true, false), (2, false, true)];
        for (phase, p0, p1) in table {
            assert_eq!(m.phase, phase);
            assert_eq!(
                (m.parity_done(0), m.parity_done(1)),
                (p0, p1),
                "phase {phase}"
            );
            m.arrive(1, &[]).unwrap();
        }
    }

    #[test]
    fn bad_counts_and_extra_arrivals_are_errors() {
        assert!(Mbarrier::new(0, 0).is_err());
        assert!(Mbarrier::new(1 << 20, 0).is_err());
        assert!(Mbarrier::new(MAX_COUNT as u64, 0).is_ok());
        let mut m = Mbarrier::new(2, 0).unwrap();
        m.expect_tx(8).unwrap();
        m.arrive(2, &[]).unwrap();
        let e = m.arrive(1, &[]).unwrap_err();
        assert!(e.contains("0 of its 2 arrivals left"), "{e}");
    }

    #[test]
    fn a_wait_orders_what_the_arrivers_did_before_arriving_only() {
        let mut c = Clocks::default();
        c.reset(3);
        let mut m = Mbarrier::new(1, 0).unwrap();
        // Warp 0 accesses at its time 1, arrives, then accesses again at time 2.
        let before = c.now(0);
        m.arrive(1, c.clock(0)).unwrap();
        c.tick(0);
        let after = c.now(0);
        assert_eq!((before, after), (1, 2));
        assert!(!c.ordered(0, before, 1), "nothing waited yet");
        c.acquire(1, &m.done_clock.clone());
        assert!(c.ordered(0, before, 1));
        assert!(!c.ordered(0, after, 1), "after the arrive is not ordered");
        assert!(!c.ordered(0, before, 2), "warp 2 never waited");
        assert!(c.ordered(2, 1, 2), "a warp is ordered with itself");
    }

    #[test]
    fn agents_join_every_clock() {
        let mut c = Clocks::default();
        c.reset(2);
        let a = c.add_component();
        assert_eq!((a, c.len()), (2, 3));
        assert_eq!(c.clock(0), &[1, 0, 0]);
        assert_eq!(c.clock(a), &[0, 0, 1]);
        c.acquire(a, &[0, 5]);
        assert!(c.ordered(1, 5, a) && !c.ordered(1, 6, a));
    }
}
