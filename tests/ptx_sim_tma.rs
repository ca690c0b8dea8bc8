//! The interpreter's TMA copies and mbarriers, on a two-stage ring (`tma_ring.cu`): the
//! copied boxes (128-byte swizzle, zeros outside the tensor) reach the consumers intact, and
//! each broken rule of the pipeline is named: reading a box without waiting for its
//! mbarrier, releasing a stage before reading it, waiting on the wrong parity, and using
//! the mbarriers before their initialisation is ordered before the use. Then one copy of a
//! five-dimensional box (`tma_box_5d`) over a tensor whose middle dimensions are swapped in
//! memory, inside and sticking out of every dimension.
#![cfg(feature = "ptx-sim")]

use tarflow::gpu::tensor_map::{Swizzle, TensorMap};
use tarflow::gpu::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

const RING: PtxModule = PtxModule {
    name: "tma_ring",
    ptx: include_str!("ptx-fixtures/tma_ring.ptx"),
};

/// Rows and columns of the tensor (a pitch of 64 elements): the last box sticks out by 3
/// rows and every box by 4 columns.
const ROWS: usize = 21;
const COLS: usize = 60;
const TILES: usize = 3;

fn value(r: usize, c: usize) -> u16 {
    (r * 64 + c + 1) as u16
}

fn setup(d: &PtxSim) -> (TensorMap, DevicePtr) {
    let mut host = vec![0xdeadu16; ROWS * 64];
    for r in 0..ROWS {
        for c in 0..COLS {
            host[r * 64 + c] = value(r, c);
        }
    }
    let src = d.alloc(host.len() * 2).unwrap();
    d.upload(src, bytemuck::cast_slice(&host)).unwrap();
    let map = TensorMap {
        elem_bytes: 2,
        base: src.0,
        dims: vec![COLS as u64, ROWS as u64],
        strides: vec![128],
        boxes: vec![64, 8],
        swizzle: Swizzle::B128,
    };
    (map, d.alloc(TILES * 8 * 128).unwrap())
}

fn expected() -> Vec<u16> {
    let mut want = vec![0u16; TILES * 8 * 64];
    for r in 0..ROWS {
        for c in 0..COLS {
            want[r * 64 + c] = value(r, c);
        }
    }
    want
}

/// The consumers' output for `mode`, with the map's swizzle set to `swizzle`.
fn run_with(d: &PtxSim, mode: u32, swizzle: Swizzle) -> Result<Vec<u16>, String> {
    let (mut map, out) = setup(d);
    map.swizzle = swizzle;
    let args = [
        KernelArg::TensorMap(d.tensor_map(&map).unwrap()),
        KernelArg::Ptr(out),
        KernelArg::U32(TILES as u32),
        KernelArg::U32(mode),
    ];
    d.launch(&RING, "tma_ring", LaunchConfig::linear(1, 96), &args)
        .map_err(|e| e.to_string())?;
    let mut got = vec![0u16; TILES * 8 * 64];
    d.download(out, bytemuck::cast_slice_mut(&mut got)).unwrap();
    Ok(got)
}

fn run(d: &PtxSim, mode: u32) -> Result<(), String> {
    let got = run_with(d, mode, Swizzle::B128)?;
    let want = expected();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "row {}, column {}", i / 64, i % 64);
    }
    Ok(())
}

#[test]
fn the_ring_delivers_every_box_with_zeros_outside_the_tensor() {
    let d = PtxSim::new();
    run(&d, 0).unwrap();
    let c = d.last_counters().unwrap();
    // Every in-range element is read from global memory once.
    assert_eq!(c.global_bytes_read, (ROWS * COLS * 2) as u64);
}

#[test]
fn without_the_swizzle_the_consumers_read_chunks_from_the_wrong_places() {
    let got = run_with(&PtxSim::new(), 0, Swizzle::None).unwrap();
    let want = expected();
    // Row r's chunk c is read from chunk c ^ r: row 0 is right, row 1 has its chunks swapped
    // in pairs.
    assert_eq!(got[..64], want[..64]);
    assert_eq!(got[64..72], want[72..80]);
    assert_ne!(got, want);
}

#[test]
fn reading_a_box_before_waiting_for_its_mbarrier_is_an_error() {
    let e = run(&PtxSim::new(), 1).unwrap_err();
    assert!(
        e.contains("written by an asynchronous copy that completes on the mbarrier at")
            && e.contains("without waiting for that mbarrier's phase"),
        "{e}"
    );
}

#[test]
fn releasing_a_stage_before_reading_it_is_a_race_with_the_next_copy() {
    let e = run(&PtxSim::new(), 2).unwrap_err();
    assert!(
        e.contains("shared-memory race")
            && e.contains("an asynchronous copy writes it after thread"),
        "{e}"
    );
}

#[test]
fn waiting_on_the_wrong_parity_is_a_deadlock() {
    let e = run(&PtxSim::new(), 3).unwrap_err();
    assert!(
        e.contains("deadlock") && e.contains("mbarrier.try_wait.parity"),
        "{e}"
    );
}

#[test]
fn using_an_mbarrier_before_its_initialisation_is_ordered_is_an_error() {
    let e = run(&PtxSim::new(), 4).unwrap_err();
    assert!(
        e.contains("(warp 1) uses the mbarrier at shared address")
            && e.contains("initialised by thread 0 (warp 0) with no bar.sync"),
        "{e}"
    );
}

#[test]
fn tensor_maps_are_checked_before_encoding() {
    let d = PtxSim::new();
    let (mut map, _) = setup(&d);
    map.strides[0] = 120;
    let e = d.tensor_map(&map).unwrap_err().to_string();
    assert!(e.contains("stride of dimension 1 is 120 bytes"), "{e}");
}

/// A five-dimensional tensor of u16 (dims 10 x 5 x 3 x 4 x 2, innermost first) whose
/// dimensions 2 and 3 are swapped in memory (strides 32, 640, 160, 1,920 bytes): element
/// (x, y, z, w, v) holds its u16 offset plus one.
fn five_d(d: &PtxSim) -> (TensorMap, Vec<u16>) {
    let host: Vec<u16> = (0..1920u16).map(|a| a + 1).collect();
    let src = d.alloc(host.len() * 2).unwrap();
    d.upload(src, bytemuck::cast_slice(&host)).unwrap();
    let map = TensorMap {
        elem_bytes: 2,
        base: src.0,
        dims: vec![10, 5, 3, 4, 2],
        strides: vec![32, 640, 160, 1920],
        boxes: vec![8, 3, 2, 2, 2],
        swizzle: Swizzle::None,
    };
    (map, host)
}

#[test]
fn a_five_dimensional_box_is_gathered_dimension_0_fastest_with_zeros_outside() {
    let d = PtxSim::new();
    let (map, host) = five_d(&d);
    let bytes = map.box_bytes() as usize;
    let out = d.alloc(bytes).unwrap();
    // Inside; sticking out of every dimension; before the start of the first two.
    for coords in [[0i32, 1, 0, 1, 0], [4, 3, 2, 3, 1], [-2, -1, 0, 0, 0]] {
        let mut args = vec![
            KernelArg::TensorMap(d.tensor_map(&map).unwrap()),
            KernelArg::Ptr(out),
            KernelArg::U32(bytes as u32),
        ];
        args.extend(coords.map(|c| KernelArg::U32(c as u32)));
        d.launch(&RING, "tma_box_5d", LaunchConfig::linear(1, 64), &args)
            .unwrap();
        let mut got = vec![0u16; bytes / 2];
        d.download(out, bytemuck::cast_slice_mut(&mut got)).unwrap();
        // The box element by element, dimension 0 fastest.
        let mut i = 0;
        for v in 0..2 {
            for w in 0..2 {
                for z in 0..2 {
                    for y in 0..3 {
                        for x in 0..8 {
                            let g = [
                                coords[0] + x,
                                coords[1] + y,
                                coords[2] + z,
                                coords[3] + w,
                                coords[4] + v,
                            ];
                            let inside = g
                                .iter()
                                .zip(&map.dims)
                                .all(|(&g, &n)| g >= 0 && (g as u64) < n);
                            let want = if inside {
                                let at =
                                    g[0] * 2 + g[1] * 32 + g[2] * 640 + g[3] * 160 + g[4] * 1920;
                                host[at as usize / 2]
                            } else {
                                0
                            };
                            assert_eq!(got[i], want, "coords {coords:?}, box element {i} at {g:?}");
                            i += 1;
                        }
                    }
                }
            }
        }
    }
}
