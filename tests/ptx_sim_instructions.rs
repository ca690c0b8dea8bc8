//! Per-instruction semantics, table-driven, with expected values worked out from the PTX
//! ISA's rules (not from the interpreter): each case runs one instruction in its own thread
//! of a tiny hand-written kernel (parse + decode + execute), so the parser's reading of the
//! modifiers is under test too.
#![cfg(feature = "ptx-sim")]

use tarflow::gpu::{Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

/// Runs `body` once per case in thread i, with inputs `%a`, `%b`, `%c` (each `width` bits,
/// from case i) and stores `%d` (same width) as thread i's result. Predicate registers
/// `%p<4>` are declared for bodies that need them.
fn run(width: u32, body: &str, cases: &[[u64; 3]]) -> Vec<u64> {
    let (reg, bytes) = if width == 32 {
        (".b32", 4)
    } else {
        (".b64", 8)
    };
    let text = format!(
        ".version 9.0\n.target sm_80\n.address_size 64\n.visible .entry t(.param .u64 pin, \
         .param .u64 pout)\n{{\n.reg .pred %p<4>;\n.reg {reg} %a, %b, %c, %d, %e;\n\
         .reg .b32 %t<4>;\n.reg .b64 %rd<8>;\n.reg .b16 %h<4>;\n\
         ld.param.u64 %rd1, [pin];\nld.param.u64 %rd2, [pout];\nmov.u32 %t1, %tid.x;\n\
         mul.wide.u32 %rd3, %t1, {in_stride};\nadd.s64 %rd4, %rd1, %rd3;\n\
         ld.global{reg} %a, [%rd4];\nld.global{reg} %b, [%rd4+{bytes}];\n\
         ld.global{reg} %c, [%rd4+{twice}];\nmul.wide.u32 %rd5, %t1, {bytes};\n\
         add.s64 %rd6, %rd2, %rd5;\n{body}\nst.global{reg} [%rd6], %d;\nret;\n}}\n",
        in_stride = 3 * bytes,
        twice = 2 * bytes,
    );
    let m = PtxModule {
        name: "one_instruction",
        ptx: Box::leak(text.into_boxed_str()),
    };
    let d = PtxSim::new();
    let mut input = Vec::new();
    for c in cases {
        for v in c {
            input.extend_from_slice(&v.to_le_bytes()[..bytes]);
        }
    }
    let pin = d.alloc(input.len()).unwrap();
    d.upload(pin, &input).unwrap();
    let pout = d.alloc(cases.len() * bytes).unwrap();
    d.launch(
        &m,
        "t",
        LaunchConfig::linear(1, cases.len() as u32),
        &[KernelArg::Ptr(pin), KernelArg::Ptr(pout)],
    )
    .unwrap_or_else(|e| panic!("{body}: {e}"));
    let mut out = vec![0u8; cases.len() * bytes];
    d.download(pout, &mut out).unwrap();
    out.chunks(bytes)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..bytes].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// Checks a table of 32-bit cases `(a, b, c) -> d` for `body`.
fn check32(body: &str, table: &[(u32, u32, u32, u32)]) {
    let cases: Vec<[u64; 3]> = table
        .iter()
        .map(|t| [t.0 as u64, t.1 as u64, t.2 as u64])
        .collect();
    let got = run(32, body, &cases);
    for (t, g) in table.iter().zip(got) {
        assert_eq!(
            g as u32, t.3,
            "`{body}` with a={:#x} b={:#x} c={:#x}: got {:#x}, want {:#x}",
            t.0, t.1, t.2, g, t.3
        );
    }
}

fn check64(body: &str, table: &[(u64, u64, u64, u64)]) {
    let cases: Vec<[u64; 3]> = table.iter().map(|t| [t.0, t.1, t.2]).collect();
    let got = run(64, body, &cases);
    for (t, g) in table.iter().zip(got) {
        assert_eq!(
            g, t.3,
            "`{body}` with a={:#x} b={:#x} c={:#x}: got {:#x}, want {:#x}",
            t.0, t.1, t.2, g, t.3
        );
    }
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

/// 2^e as f32 (exact).
fn p2(e: i32) -> f32 {
    2f32.powi(e)
}

const NAN: u32 = 0x7fff_ffff; // canonical NaN of f32 results
const QNAN_IN: u32 = 0x7fc0_0001; // a NaN input with a payload
const INF: u32 = 0x7f80_0000;
const NEG_INF: u32 = 0xff80_0000;
const NEG_ZERO: u32 = 0x8000_0000;
const DENORM: u32 = 0x0000_0010; // a positive f32 subnormal

#[test]
fn integer_add_sub_wrap_and_mul_halves() {
    check32(
        "add.s32 %d, %a, %b;",
        &[
            (0x7fff_ffff, 1, 0, 0x8000_0000),
            (5, (-7i32) as u32, 0, (-2i32) as u32),
        ],
    );
    check32(
        "sub.u32 %d, %a, %b;",
        &[(0, 1, 0, 0xffff_ffff), (10, 3, 0, 7)],
    );
    check32(
        "mul.lo.s32 %d, %a, %b;",
        &[
            (0x10000, 0x10000, 0, 0),
            (-3i32 as u32, 5, 0, -15i32 as u32),
        ],
    );
    // High halves: -2 * 3 = -6 -> all ones above; as unsigned 0xffffffff * 2 = 0x1_ffff_fffe.
    check32(
        "mul.hi.s32 %d, %a, %b;",
        &[(-2i32 as u32, 3, 0, 0xffff_ffff), (0x4000_0000, 4, 0, 1)],
    );
    check32(
        "mul.hi.u32 %d, %a, %b;",
        &[
            (0xffff_ffff, 2, 0, 1),
            (0x8000_0000, 0x8000_0000, 0, 0x4000_0000),
        ],
    );
    check32(
        "mad.lo.s32 %d, %a, %b, %c;",
        &[
            (7, 6, -50i32 as u32, -8i32 as u32),
            (0xffff_ffff, 0xffff_ffff, 0, 1),
        ],
    );
    // mul.wide: full 64-bit products (sign-extended for .s32).
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u32.u64 %t2, %b;\nmul.wide.s32 %d, %t1, %t2;",
        &[
            (-2i64 as u64, 3, 0, -6i64 as u64),
            (0x8000_0000, 0x8000_0000, 0, 0x4000_0000_0000_0000),
        ],
    );
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u32.u64 %t2, %b;\nmul.wide.u32 %d, %t1, %t2;",
        &[(0xffff_ffff, 0xffff_ffff, 0, 0xffff_fffe_0000_0001)],
    );
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u32.u64 %t2, %b;\nmad.wide.s32 %d, %t1, %t2, %c;",
        &[(-4i64 as u64, 5, 100, 80)],
    );
    check64(
        "mul.lo.s64 %d, %a, %b;",
        &[(1 << 63, 2, 0, 0), (-3i64 as u64, 7, 0, -21i64 as u64)],
    );
    check64("add.s64 %d, %a, %b;", &[(u64::MAX, 1, 0, 0)]);
}

#[test]
fn integer_div_rem_min_max_truncate_toward_zero() {
    check32(
        "div.s32 %d, %a, %b;",
        &[
            (-7i32 as u32, 2, 0, -3i32 as u32),
            (7, -2i32 as u32, 0, -3i32 as u32),
        ],
    );
    check32(
        "rem.s32 %d, %a, %b;",
        &[(-7i32 as u32, 2, 0, -1i32 as u32), (7, -2i32 as u32, 0, 1)],
    );
    check32("div.u32 %d, %a, %b;", &[(0xffff_fffe, 2, 0, 0x7fff_ffff)]);
    check32("rem.u32 %d, %a, %b;", &[(17, 5, 0, 2)]);
    check32("min.s32 %d, %a, %b;", &[(-1i32 as u32, 1, 0, -1i32 as u32)]);
    check32("min.u32 %d, %a, %b;", &[(0xffff_ffff, 1, 0, 1)]);
    check32(
        "max.s32 %d, %a, %b;",
        &[
            (-1i32 as u32, 1, 0, 1),
            (-5i32 as u32, -9i32 as u32, 0, -5i32 as u32),
        ],
    );
    check32("max.u32 %d, %a, %b;", &[(0xffff_ffff, 1, 0, 0xffff_ffff)]);
}

#[test]
fn logic_and_shifts_clamp_amounts_at_the_width() {
    check32("and.b32 %d, %a, %b;", &[(0xf0f0, 0xff00, 0, 0xf000)]);
    check32("or.b32 %d, %a, %b;", &[(0xf0f0, 0x0f00, 0, 0xfff0)]);
    check32("xor.b32 %d, %a, %b;", &[(0xffff, 0x0ff0, 0, 0xf00f)]);
    check32("not.b32 %d, %a;", &[(0x0000_ffff, 0, 0, 0xffff_0000)]);
    check32(
        "shl.b32 %d, %a, %b;",
        &[(1, 31, 0, 0x8000_0000), (1, 32, 0, 0), (3, 100, 0, 0)],
    );
    check32(
        "shr.s32 %d, %a, %b;",
        &[
            (-8i32 as u32, 1, 0, -4i32 as u32),
            (0x8000_0000, 40, 0, 0xffff_ffff),
            (0x7000_0000, 32, 0, 0),
        ],
    );
    check32(
        "shr.u32 %d, %a, %b;",
        &[(0x8000_0000, 31, 0, 1), (0x8000_0000, 32, 0, 0)],
    );
    check32("shr.b32 %d, %a, %b;", &[(0x8000_0000, 4, 0, 0x0800_0000)]);
    check64("shl.b64 %d, %a, %b;", &[(1, 63, 0, 1 << 63), (1, 64, 0, 0)]);
    check64("shr.s64 %d, %a, %b;", &[(1 << 63, 63, 0, u64::MAX)]);
    check32(
        "neg.s32 %d, %a;",
        &[(1, 0, 0, 0xffff_ffff), (0x8000_0000, 0, 0, 0x8000_0000)],
    );
    check32(
        "abs.s32 %d, %a;",
        &[(-5i32 as u32, 0, 0, 5), (0x8000_0000, 0, 0, 0x8000_0000)],
    );
    check32("popc.b32 %d, %a;", &[(0xf0f0_0001, 0, 0, 9)]);
    check32(
        "clz.b32 %d, %a;",
        &[(0, 0, 0, 32), (1, 0, 0, 31), (0x8000_0000, 0, 0, 0)],
    );
    check32(
        "brev.b32 %d, %a;",
        &[(1, 0, 0, 0x8000_0000), (0x0000_00f0, 0, 0, 0x0f00_0000)],
    );
    check32("and.b32 %d, %a, 255;", &[(0x1234, 0, 0, 0x34)]);
}

#[test]
fn setp_comparisons_including_unordered_and_combined_predicates() {
    let sel = |cmp: &str| format!("setp.{cmp} %p1, %a, %b;\nselp.u32 %d, 1, 0, %p1;");
    let one = f(1.0);
    let two = f(2.0);
    // (a, b, want) for every float comparison: ordered ones are false with a NaN operand,
    // unordered ones true.
    let table: &[(&str, [u32; 4])] = &[
        // results for (1,2), (2,1), (1,1), (NaN,1)
        ("eq.f32", [0, 0, 1, 0]),
        ("ne.f32", [1, 1, 0, 0]),
        ("lt.f32", [1, 0, 0, 0]),
        ("le.f32", [1, 0, 1, 0]),
        ("gt.f32", [0, 1, 0, 0]),
        ("ge.f32", [0, 1, 1, 0]),
        ("equ.f32", [0, 0, 1, 1]),
        ("neu.f32", [1, 1, 0, 1]),
        ("ltu.f32", [1, 0, 0, 1]),
        ("leu.f32", [1, 0, 1, 1]),
        ("gtu.f32", [0, 1, 0, 1]),
        ("geu.f32", [0, 1, 1, 1]),
        ("num.f32", [1, 1, 1, 0]),
        ("nan.f32", [0, 0, 0, 1]),
    ];
    for (cmp, want) in table {
        let pairs = [(one, two), (two, one), (one, one), (QNAN_IN, one)];
        let t: Vec<(u32, u32, u32, u32)> = pairs
            .iter()
            .zip(want)
            .map(|(&(a, b), &w)| (a, b, 0, w))
            .collect();
        check32(&sel(cmp), &t);
    }
    // -0 == +0; signed vs unsigned integer order.
    check32(&sel("eq.f32"), &[(NEG_ZERO, 0, 0, 1)]);
    check32(&sel("lt.s32"), &[(0xffff_ffff, 1, 0, 1)]);
    check32(
        &sel("lo.u32"),
        &[(0xffff_ffff, 1, 0, 0), (1, 0xffff_ffff, 0, 1)],
    );
    check32(&sel("hs.u32"), &[(5, 5, 0, 1)]);
    check32(&sel("ls.u32"), &[(6, 5, 0, 0)]);
    check32(&sel("hi.u32"), &[(6, 5, 0, 1)]);
    check32(&sel("ne.b32"), &[(6, 5, 0, 1)]);
    // .and with a negated predicate, and the complement destination.
    check32(
        "setp.ne.u32 %p2, %c, 0;\nsetp.lt.s32.and %p1, %a, %b, !%p2;\nselp.u32 %d, 1, 0, %p1;",
        &[(1, 2, 0, 1), (1, 2, 1, 0), (3, 2, 0, 0)],
    );
    check32(
        // The second destination is (not t) OR c, not the complement of the first.
        "setp.ne.u32 %p2, %c, 0;\nsetp.lt.s32.or %p1|%p3, %a, %b, %p2;\nselp.u32 %d, 1, 0, %p3;",
        &[(1, 2, 0, 0), (3, 2, 0, 1), (3, 2, 1, 1), (1, 2, 1, 1)],
    );
    check32(
        "setp.ne.u32 %p2, %c, 0;\nsetp.lt.s32.xor %p1, %a, %b, %p2;\nselp.u32 %d, 1, 0, %p1;",
        &[(1, 2, 1, 0), (3, 2, 1, 1)],
    );
    // .ftz treats a subnormal as zero.
    check32(&sel("eq.ftz.f32"), &[(DENORM, 0, 0, 1)]);
    check32(&sel("eq.f32"), &[(DENORM, 0, 0, 0)]);
}

#[test]
fn predicated_execution_and_predicate_logic() {
    check32(
        "mov.u32 %d, 7;\nsetp.eq.u32 %p1, %a, 1;\n@%p1 mov.u32 %d, %b;\n@!%p1 add.u32 %d, %d, %c;",
        &[(1, 42, 5, 42), (0, 42, 5, 12)],
    );
    check32(
        "setp.ne.u32 %p1, %a, 0;\nsetp.ne.u32 %p2, %b, 0;\nand.pred %p3, %p1, %p2;\n\
         or.pred %p1, %p1, %p2;\nxor.pred %p2, %p3, %p1;\nnot.pred %p2, %p2;\n\
         selp.u32 %d, 1, 0, %p2;",
        // not ((a && b) xor (a || b)) is true when a == b
        &[(0, 0, 0, 1), (1, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 1)],
    );
    check32(
        "setp.ne.u32 %p1, %c, 0;\nselp.b32 %d, %a, %b, %p1;",
        &[(10, 20, 1, 10), (10, 20, 0, 20)],
    );
    // bra is taken per lane.
    check32(
        "mov.u32 %d, 1;\nsetp.eq.u32 %p1, %a, 0;\n@%p1 bra $L_skip;\nmov.u32 %d, 2;\n$L_skip:\nadd.u32 %d, %d, 10;",
        &[(0, 0, 0, 11), (1, 0, 0, 12)],
    );
}

#[test]
fn f32_add_mul_in_every_rounding_mode() {
    // 1 + 2^-24 is a tie between 1 and 1 + 2^-23: rn -> 1 (even), rp -> 1 + 2^-23.
    let one = f(1.0);
    let up = f(1.0 + p2(-23));
    let h = f(p2(-24));
    let just_over = f(p2(-24) + p2(-30));
    let table = [
        ("rn", [one, f(1.0 + p2(-23)), f(-(1.0 + p2(-23)))]),
        ("rz", [one, one, f(-1.0)]),
        ("rm", [one, one, f(-(1.0 + p2(-23)))]),
        ("rp", [up, up, f(-1.0)]),
    ];
    for (mode, want) in table {
        check32(
            &format!("add.{mode}.f32 %d, %a, %b;"),
            &[
                (one, h, 0, want[0]),
                (one, just_over, 0, want[1]),
                // -1 - (2^-24 + 2^-30): just past the tie below -1
                (f(-1.0), f(-(p2(-24) + p2(-30))), 0, want[2]),
            ],
        );
    }
    // x + (-x) is +0, except toward minus infinity where it is -0.
    check32("add.rn.f32 %d, %a, %b;", &[(one, f(-1.0), 0, 0)]);
    check32("add.rm.f32 %d, %a, %b;", &[(one, f(-1.0), 0, NEG_ZERO)]);
    check32(
        "sub.rn.f32 %d, %a, %b;",
        &[(NEG_ZERO, 0, 0, NEG_ZERO), (one, one, 0, 0)],
    );
    // Overflow: rn goes to infinity, rz stops at the largest finite value.
    let max = f(f32::MAX);
    check32("mul.rn.f32 %d, %a, %b;", &[(max, f(2.0), 0, INF)]);
    check32("mul.rz.f32 %d, %a, %b;", &[(max, f(2.0), 0, max)]);
    check32(
        "mul.rm.f32 %d, %a, %b;",
        &[(max, f(-2.0), 0, NEG_INF), (max, f(2.0), 0, max)],
    );
    check32(
        "mul.rp.f32 %d, %a, %b;",
        &[(f(-f32::MAX), f(2.0), 0, f(-f32::MAX))],
    );
    // (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: rn and rz drop the 2^-24, rp keeps an ulp.
    let x = f(1.0 + p2(-12));
    check32("mul.rn.f32 %d, %a, %b;", &[(x, x, 0, f(1.0 + p2(-11)))]);
    check32(
        "mul.rp.f32 %d, %a, %b;",
        &[(x, x, 0, f(1.0 + p2(-11) + p2(-23)))],
    );
    // NaN in, canonical NaN out; inf - inf is NaN.
    check32(
        "add.f32 %d, %a, %b;",
        &[(QNAN_IN, one, 0, NAN), (INF, NEG_INF, 0, NAN)],
    );
    check32("mul.f32 %d, %a, %b;", &[(0, INF, 0, NAN)]);
}

#[test]
fn f32_fma_rounds_once_and_rm_differs_from_rn() {
    // a*b + c = 1 + 2^-23 + 2^-24 exactly: a tie between 1 + 2^-23 (odd) and 1 + 2^-22.
    let a = f(1.0 + p2(-23));
    let one = f(1.0);
    let c = f(p2(-24));
    for (mode, want) in [
        ("rn", 1.0 + p2(-22)),
        ("rz", 1.0 + p2(-23)),
        ("rm", 1.0 + p2(-23)),
        ("rp", 1.0 + p2(-22)),
    ] {
        check32(
            &format!("fma.{mode}.f32 %d, %a, %b, %c;"),
            &[(a, one, c, f(want))],
        );
    }
    // Negative: rm moves away from zero.
    let na = f(-(1.0 + p2(-23)));
    let nc = f(-p2(-24));
    check32(
        "fma.rm.f32 %d, %a, %b, %c;",
        &[(na, one, nc, f(-(1.0 + p2(-22))))],
    );
    check32(
        "fma.rz.f32 %d, %a, %b, %c;",
        &[(na, one, nc, f(-(1.0 + p2(-23))))],
    );
    // A single rounding: (1 + 2^-12)(1 - 2^-12) - 1 = -2^-24 exactly (two roundings give 0).
    check32(
        "fma.rn.f32 %d, %a, %b, %c;",
        &[(f(1.0 + p2(-12)), f(1.0 - p2(-12)), f(-1.0), f(-p2(-24)))],
    );
    check32(
        "mad.rn.f32 %d, %a, %b, %c;",
        &[(f(2.0), f(3.0), f(1.0), f(7.0))],
    );
    // .sat clamps to [0, 1] and maps NaN to 0; .ftz flushes subnormal inputs and results.
    check32(
        "fma.rn.sat.f32 %d, %a, %b, %c;",
        &[
            (f(2.0), f(3.0), 0, one),
            (f(-2.0), f(3.0), 0, 0),
            (QNAN_IN, one, 0, 0),
        ],
    );
    check32(
        "fma.rn.ftz.f32 %d, %a, %b, %c;",
        &[(DENORM, f(1.0), 0, 0), (f(p2(-100)), f(p2(-30)), 0, 0)],
    );
    check32("fma.rn.f32 %d, %a, %b, %c;", &[(DENORM, f(1.0), 0, DENORM)]);
    check32(
        "add.ftz.f32 %d, %a, %b;",
        &[(DENORM | NEG_ZERO, 0x8000_0000, 0, NEG_ZERO)],
    );
    check32(
        "add.sat.f32 %d, %a, %b;",
        &[(f(0.75), f(0.5), 0, one), (f(-0.75), f(0.5), 0, 0)],
    );
}

#[test]
fn f32_division_reciprocal_and_square_root() {
    let third = 1.0f32 / 3.0;
    check32(
        "div.rn.f32 %d, %a, %b;",
        &[
            (f(1.0), f(3.0), 0, f(third)),
            (f(1.0), 0, 0, INF),
            (0, 0, 0, NAN),
        ],
    );
    // 1/3 = 0x3eaaaaab (rounded up); rz and rm give 0x3eaaaaaa.
    check32(
        "div.rz.f32 %d, %a, %b;",
        &[(f(1.0), f(3.0), 0, 0x3eaa_aaaa)],
    );
    check32(
        "div.rm.f32 %d, %a, %b;",
        &[
            (f(1.0), f(3.0), 0, 0x3eaa_aaaa),
            (f(-1.0), f(3.0), 0, 0xbeaa_aaab),
        ],
    );
    check32(
        "div.rp.f32 %d, %a, %b;",
        &[(f(1.0), f(3.0), 0, 0x3eaa_aaab)],
    );
    // div.approx = a * rcp(b); div.full is within 2 ulp: both exact on these.
    check32("div.approx.f32 %d, %a, %b;", &[(f(6.0), f(4.0), 0, f(1.5))]);
    check32("div.full.f32 %d, %a, %b;", &[(f(6.0), f(4.0), 0, f(1.5))]);
    check32(
        "rcp.rn.f32 %d, %a;",
        &[
            (f(4.0), 0, 0, f(0.25)),
            (f(3.0), 0, 0, f(third)),
            (NEG_ZERO, 0, 0, NEG_INF),
        ],
    );
    check32(
        "rcp.approx.ftz.f32 %d, %a;",
        &[(f(8.0), 0, 0, f(0.125)), (DENORM, 0, 0, INF)],
    );
    check32(
        "sqrt.rn.f32 %d, %a;",
        &[
            (f(2.0), 0, 0, f(2f32.sqrt())),
            (f(-1.0), 0, 0, NAN),
            (NEG_ZERO, 0, 0, NEG_ZERO),
        ],
    );
    // sqrt(2) = 0x3fb504f3 (rounded down from 1.41421356237...): rp gives the next float.
    check32("sqrt.rp.f32 %d, %a;", &[(f(2.0), 0, 0, 0x3fb5_04f4)]);
    check32("sqrt.approx.f32 %d, %a;", &[(f(16.0), 0, 0, f(4.0))]);
}

#[test]
fn f32_approximate_functions_hit_exact_points_and_specials() {
    check32(
        "rsqrt.approx.f32 %d, %a;",
        &[
            (f(4.0), 0, 0, f(0.5)),
            (0, 0, 0, INF),
            (NEG_ZERO, 0, 0, NEG_INF),
            (f(-4.0), 0, 0, NAN),
        ],
    );
    check32(
        "ex2.approx.ftz.f32 %d, %a;",
        &[
            (f(10.0), 0, 0, f(1024.0)),
            (f(-1.0), 0, 0, f(0.5)),
            (NEG_INF, 0, 0, 0),
            (INF, 0, 0, INF),
            (QNAN_IN, 0, 0, NAN),
            (f(-130.0), 0, 0, 0),
        ],
    );
    // Without .ftz, 2^-130 is a subnormal result.
    check32("ex2.approx.f32 %d, %a;", &[(f(-130.0), 0, 0, f(p2(-130)))]);
    check32(
        "lg2.approx.f32 %d, %a;",
        &[
            (f(8.0), 0, 0, f(3.0)),
            (0, 0, 0, NEG_INF),
            (f(-1.0), 0, 0, NAN),
        ],
    );
    check32(
        "sin.approx.f32 %d, %a;",
        &[(0, 0, 0, 0), (NEG_ZERO, 0, 0, NEG_ZERO)],
    );
    check32("cos.approx.f32 %d, %a;", &[(0, 0, 0, f(1.0))]);
    check32(
        "tanh.approx.f32 %d, %a;",
        &[
            (f(20.0), 0, 0, f(1.0)),
            (f(-20.0), 0, 0, f(-1.0)),
            (0, 0, 0, 0),
        ],
    );
    // Non-exact points: within the ISA's stated bounds of the true value.
    let got = run(32, "ex2.approx.f32 %d, %a;", &[[f(0.3) as u64, 0, 0]]);
    let want = 0.3f64.exp2();
    assert!(((f32::from_bits(got[0] as u32) as f64 - want) / want).abs() < 2f64.powi(-22));
}

#[test]
fn f32_min_max_neg_abs_copysign_and_testp() {
    let one = f(1.0);
    check32(
        "min.f32 %d, %a, %b;",
        &[
            (one, f(2.0), 0, one),
            (QNAN_IN, one, 0, one),
            (one, QNAN_IN, 0, one),
            (QNAN_IN, QNAN_IN, 0, NAN),
            (0, NEG_ZERO, 0, NEG_ZERO),
        ],
    );
    check32(
        "max.f32 %d, %a, %b;",
        &[
            (one, f(2.0), 0, f(2.0)),
            (QNAN_IN, one, 0, one),
            (NEG_ZERO, 0, 0, 0),
            (NEG_INF, QNAN_IN, 0, NEG_INF),
        ],
    );
    check32("max.ftz.f32 %d, %a, %b;", &[(DENORM, 0, 0, 0)]);
    check32(
        "neg.f32 %d, %a;",
        &[
            (0, 0, 0, NEG_ZERO),
            (one, 0, 0, f(-1.0)),
            (INF, 0, 0, NEG_INF),
        ],
    );
    check32(
        "abs.f32 %d, %a;",
        &[
            (NEG_ZERO, 0, 0, 0),
            (f(-3.0), 0, 0, f(3.0)),
            (NEG_INF, 0, 0, INF),
        ],
    );
    check32("neg.ftz.f32 %d, %a;", &[(DENORM, 0, 0, NEG_ZERO)]);
    // copysign d, a, b: the magnitude of b with the sign of a (the FIRST operand).
    check32(
        "copysign.f32 %d, %a, %b;",
        &[
            (f(-1.0), f(2.0), 0, f(-2.0)),
            (f(1.0), f(-2.0), 0, f(2.0)),
            (NEG_ZERO, INF, 0, NEG_INF),
        ],
    );
    let tp = |k: &str| format!("testp.{k}.f32 %p1, %a;\nselp.u32 %d, 1, 0, %p1;");
    let vals = [one, INF, QNAN_IN, DENORM, 0];
    for (k, want) in [
        ("finite", [1, 0, 0, 1, 1]),
        ("infinite", [0, 1, 0, 0, 0]),
        ("number", [1, 1, 0, 1, 1]),
        ("notanumber", [0, 0, 1, 0, 0]),
        ("normal", [1, 0, 0, 0, 0]),
        ("subnormal", [0, 0, 0, 1, 0]),
    ] {
        let t: Vec<_> = vals.iter().zip(want).map(|(&v, w)| (v, 0, 0, w)).collect();
        check32(&tp(k), &t);
    }
}

#[test]
fn f64_arithmetic_rounding() {
    let d = |x: f64| x.to_bits();
    let e = 2f64.powi(-53);
    check64("add.rn.f64 %d, %a, %b;", &[(d(1.0), d(e), 0, d(1.0))]);
    check64(
        "add.rp.f64 %d, %a, %b;",
        &[(d(1.0), d(e), 0, d(1.0 + 2.0 * e))],
    );
    check64(
        "add.rm.f64 %d, %a, %b;",
        &[
            (d(-1.0), d(-e), 0, d(-1.0 - 2.0 * e)),
            (d(1.0), d(-1.0), 0, d(-0.0)),
        ],
    );
    check64(
        "add.rz.f64 %d, %a, %b;",
        &[(d(1.0), d(3.0 * e), 0, d(1.0 + 2.0 * e))],
    );
    check64(
        "mul.rz.f64 %d, %a, %b;",
        &[(d(f64::MAX), d(2.0), 0, d(f64::MAX))],
    );
    // 1/3 in f64 rounds down (0x3fd5555555555555): rp gives the next value.
    check64(
        "div.rn.f64 %d, %a, %b;",
        &[(d(1.0), d(3.0), 0, 0x3fd5_5555_5555_5555)],
    );
    check64(
        "div.rp.f64 %d, %a, %b;",
        &[(d(1.0), d(3.0), 0, 0x3fd5_5555_5555_5556)],
    );
    // fma: (1 + 2^-52) + 2^-53 is a tie: rn -> 1 + 2^-51 (even), rm -> 1 + 2^-52.
    let a = d(1.0 + 2.0 * e);
    check64(
        "fma.rn.f64 %d, %a, %b, %c;",
        &[(a, d(1.0), d(e), d(1.0 + 4.0 * e))],
    );
    check64(
        "fma.rm.f64 %d, %a, %b, %c;",
        &[(a, d(1.0), d(e), d(1.0 + 2.0 * e))],
    );
    check64("sqrt.rn.f64 %d, %a;", &[(d(9.0), 0, 0, d(3.0))]);
    check64("min.f64 %d, %a, %b;", &[(d(f64::NAN), d(2.0), 0, d(2.0))]);
    check64("neg.f64 %d, %a;", &[(d(0.0), 0, 0, d(-0.0))]);
    check64("copysign.f64 %d, %a, %b;", &[(d(-1.0), d(5.0), 0, d(-5.0))]);
    check64("rcp.rn.f64 %d, %a;", &[(d(4.0), 0, 0, d(0.25))]);
}

#[test]
fn cvt_between_integers_and_floats() {
    let fcase = |x: f32, w: i32| (f(x), 0, 0, w as u32);
    check32(
        "cvt.rzi.s32.f32 %d, %a;",
        &[
            fcase(2.7, 2),
            fcase(-2.7, -2),
            fcase(f32::NAN, 0),
            fcase(3e9, i32::MAX),
            fcase(f32::NEG_INFINITY, i32::MIN),
        ],
    );
    check32(
        "cvt.rni.s32.f32 %d, %a;",
        &[fcase(2.5, 2), fcase(3.5, 4), fcase(-2.5, -2)],
    );
    check32("cvt.rmi.s32.f32 %d, %a;", &[fcase(-2.1, -3), fcase(2.9, 2)]);
    check32("cvt.rpi.s32.f32 %d, %a;", &[fcase(-2.9, -2), fcase(2.1, 3)]);
    check32("cvt.rzi.u32.f32 %d, %a;", &[fcase(-5.0, 0), fcase(5e9, -1)]);
    // 2^24 + 1 is not an f32: a tie between 2^24 and 2^24 + 2.
    let n = 16_777_217u32;
    check32(
        "cvt.rn.f32.s32 %d, %a;",
        &[(n, 0, 0, f(16_777_216.0)), (-3i32 as u32, 0, 0, f(-3.0))],
    );
    check32("cvt.rz.f32.s32 %d, %a;", &[(n, 0, 0, f(16_777_216.0))]);
    check32("cvt.rp.f32.s32 %d, %a;", &[(n, 0, 0, f(16_777_218.0))]);
    check32(
        "cvt.rm.f32.s32 %d, %a;",
        &[(-(n as i32) as u32, 0, 0, f(-16_777_218.0))],
    );
    check32(
        "cvt.rn.f32.u32 %d, %a;",
        &[(0xffff_ffff, 0, 0, f(4_294_967_296.0))],
    );
    check32(
        "cvt.rz.f32.u32 %d, %a;",
        &[(0xffff_ffff, 0, 0, f(4_294_967_040.0))],
    );
    // Integer width changes: sign extension, truncation, saturation.
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.s64.s32 %d, %t1;",
        &[(0xffff_fffe, 0, 0, -2i64 as u64)],
    );
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u64.u32 %d, %t1;",
        &[(0xffff_fffe, 0, 0, 0xffff_fffe)],
    );
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u64.u32 %d, %t1;",
        &[(0x1_0000_0005, 0, 0, 5)],
    );
    check32(
        "cvt.sat.s8.s32 %d, %a;",
        &[(300, 0, 0, 127), (-300i32 as u32, 0, 0, -128i32 as u32)],
    );
    check32("cvt.s8.s32 %d, %a;", &[(0x1ff, 0, 0, 0xffff_ffff)]);
    check32(
        "cvt.u16.u32 %h1, %a;\ncvt.u32.u16 %d, %h1;",
        &[(0x12345, 0, 0, 0x2345)],
    );
    // s64 -> f64 with rounding: 2^53 + 1 ties to 2^53.
    let big = (1u64 << 53) + 1;
    check64(
        "cvt.rn.f64.s64 %d, %a;",
        &[(big, 0, 0, (9_007_199_254_740_992f64).to_bits())],
    );
    check64(
        "cvt.rp.f64.s64 %d, %a;",
        &[(big, 0, 0, (9_007_199_254_740_994f64).to_bits())],
    );
    check64(
        "cvt.rzi.s64.f64 %d, %a;",
        &[((-1e300f64).to_bits(), 0, 0, i64::MIN as u64)],
    );
}

#[test]
fn cvt_between_float_widths_and_16_bit_formats() {
    // f64 -> f32: 1 + 2^-24 ties to 1; with 2^-40 more it rounds up; rz truncates.
    let d = |x: f64| x.to_bits();
    let tie = 1.0 + 2f64.powi(-24);
    let above = tie + 2f64.powi(-40);
    check64(
        "cvt.rn.f32.f64 %t1, %a;\ncvt.f64.f32 %d, %t1;",
        &[
            (d(tie), 0, 0, d(1.0)),
            (d(above), 0, 0, d(1.0 + 2f64.powi(-23))),
        ],
    );
    check64(
        "cvt.rz.f32.f64 %t1, %a;\ncvt.f64.f32 %d, %t1;",
        &[(d(above), 0, 0, d(1.0))],
    );
    check64(
        "cvt.rp.f32.f64 %t1, %a;\ncvt.f64.f32 %d, %t1;",
        &[(d(tie), 0, 0, d(1.0 + 2f64.powi(-23)))],
    );
    check64(
        "cvt.rn.f32.f64 %t1, %a;\ncvt.f64.f32 %d, %t1;",
        &[(d(1e300), 0, 0, d(f64::INFINITY))],
    );
    check64(
        "cvt.rz.f32.f64 %t1, %a;\ncvt.f64.f32 %d, %t1;",
        &[(d(1e300), 0, 0, d(f32::MAX as f64))],
    );
    // f32 -> bf16, round to nearest even on the dropped 16 bits.
    let bf = "cvt.rn.bf16.f32 %h1, %a;\ncvt.u32.u16 %d, %h1;";
    check32(
        bf,
        &[
            (0x3f80_8000, 0, 0, 0x3f80), // tie, even stays
            (0x3f81_8000, 0, 0, 0x3f82), // tie, odd rounds up
            (0x3f80_8001, 0, 0, 0x3f81), // above the tie
            (0x3f80_7fff, 0, 0, 0x3f80), // below the tie
            (0x7f7f_ffff, 0, 0, 0x7f80), // f32::MAX rounds to infinity
            (QNAN_IN, 0, 0, 0x7fff),     // canonical NaN
            (NEG_ZERO, 0, 0, 0x8000),
            (0x0000_8001, 0, 0, 0x0001), // subnormal rounds up to the smallest bf16
        ],
    );
    check32(
        "cvt.rz.bf16.f32 %h1, %a;\ncvt.u32.u16 %d, %h1;",
        &[(0x3f81_ffff, 0, 0, 0x3f81), (0x7f7f_ffff, 0, 0, 0x7f7f)],
    );
    check32(
        "cvt.rm.bf16.f32 %h1, %a;\ncvt.u32.u16 %d, %h1;",
        &[(0xbf80_0001, 0, 0, 0xbf81)],
    );
    check32(
        "cvt.rp.bf16.f32 %h1, %a;\ncvt.u32.u16 %d, %h1;",
        &[(0x3f80_0001, 0, 0, 0x3f81)],
    );
    check32(
        "cvt.u16.u32 %h1, %a;\ncvt.f32.bf16 %d, %h1;",
        &[(0xc040, 0, 0, f(-3.0))],
    );
    // f16: 65520 is the tie above 65504 (max) and rounds to infinity; 2^-25 ties to 0.
    let hf = "cvt.rn.f16.f32 %h1, %a;\ncvt.u32.u16 %d, %h1;";
    check32(
        hf,
        &[
            (f(1.0), 0, 0, 0x3c00),
            (f(65520.0), 0, 0, 0x7c00),
            (f(65519.0), 0, 0, 0x7bff),
            (f(p2(-25)), 0, 0, 0),
            (f(p2(-24)), 0, 0, 1),
        ],
    );
    check32(
        "cvt.u16.u32 %h1, %a;\ncvt.f32.f16 %d, %h1;",
        &[(0x3555, 0, 0, f(0.333_251_95)), (0x0001, 0, 0, f(p2(-24)))],
    );
    // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half.
    check32(
        "cvt.rn.bf16x2.f32 %d, %a, %b;",
        &[(f(1.0), f(-2.0), 0, 0x3f80_c000)],
    );
    check32(
        "cvt.rn.f16x2.f32 %d, %a, %b;",
        &[(f(1.0), f(-2.0), 0, 0x3c00_c000)],
    );
    // Float to float in place: round to integer, saturate, flush.
    check32(
        "cvt.rni.f32.f32 %d, %a;",
        &[(f(2.5), 0, 0, f(2.0)), (f(-0.4), 0, 0, NEG_ZERO)],
    );
    check32("cvt.rmi.f32.f32 %d, %a;", &[(f(-0.5), 0, 0, f(-1.0))]);
    check32(
        "cvt.sat.f32.f32 %d, %a;",
        &[
            (f(1.5), 0, 0, f(1.0)),
            (f(-0.5), 0, 0, 0),
            (QNAN_IN, 0, 0, 0),
        ],
    );
    check32("cvt.ftz.f32.f32 %d, %a;", &[(DENORM, 0, 0, 0)]);
}

#[test]
fn mov_packs_unpacks_and_reads_special_registers() {
    check32(
        "mov.b32 {%h1, %h2}, %a;\nmov.b32 %d, {%h2, %h1};",
        &[(0x1234_5678, 0, 0, 0x5678_1234)],
    );
    check64(
        "cvt.u32.u64 %t1, %a;\ncvt.u32.u64 %t2, %b;\nmov.b64 %d, {%t1, %t2};",
        &[(1, 2, 0, 0x2_0000_0001)],
    );
    check64(
        "mov.b64 {%t1, %t2}, %a;\ncvt.u64.u32 %d, %t2;",
        &[(0xaaaa_bbbb_cccc_dddd, 0, 0, 0xaaaa_bbbb)],
    );
    // %tid.x, %laneid and %ntid.x for 3 threads.
    check32(
        "mov.u32 %t1, %tid.x;\nmov.u32 %t2, %laneid;\nmov.u32 %t3, %ntid.x;\nmad.lo.s32 %d, %t1, 100, %t2;\nmad.lo.s32 %d, %t3, 10000, %d;",
        &[(0, 0, 0, 30000), (0, 0, 0, 30101), (0, 0, 0, 30202)],
    );
    check32("mov.f32 %d, 0f3F800000;", &[(0, 0, 0, f(1.0))]);
    check32("mov.u32 %d, -1;", &[(0, 0, 0, 0xffff_ffff)]);
    check32("mov.u32 %d, 0x10;", &[(0, 0, 0, 16)]);
}

#[test]
fn shuffles_follow_the_isa_lane_rules() {
    // Every thread contributes a = 100 + lane; the cases are one per lane.
    let lanes = |f: &dyn Fn(u32) -> (u32, u32)| -> Vec<(u32, u32, u32, u32)> {
        (0..32)
            .map(|l| {
                let (src, p) = f(l);
                (100 + l, 0, 0, (100 + src) | (p << 16))
            })
            .collect()
    };
    // Result packs the value (low 16 bits) and the predicate (bit 16).
    let body = |s: &str| {
        format!("{s}\nselp.u32 %e, 65536, 0, %p1;\nand.b32 %d, %d, 65535;\nor.b32 %d, %d, %e;")
    };
    // down by 3, clamp 31: lanes 29..31 read themselves with p = false.
    check32(
        &body("shfl.sync.down.b32 %d|%p1, %a, 3, 31, -1;"),
        &lanes(&|l| if l + 3 <= 31 { (l + 3, 1) } else { (l, 0) }),
    );
    // up by 2 (c = 0): lanes 0, 1 keep their own.
    check32(
        &body("shfl.sync.up.b32 %d|%p1, %a, 2, 0, -1;"),
        &lanes(&|l| if l >= 2 { (l - 2, 1) } else { (l, 0) }),
    );
    check32(
        &body("shfl.sync.bfly.b32 %d|%p1, %a, 5, 31, -1;"),
        &lanes(&|l| (l ^ 5, 1)),
    );
    check32(
        &body("shfl.sync.idx.b32 %d|%p1, %a, 7, 31, -1;"),
        &lanes(&|_| (7, 1)),
    );
    // Width 8 segments (c = (32 - 8) << 8 | 31 = 0x181f): idx 3 reads lane 3 of each segment.
    check32(
        &body("shfl.sync.idx.b32 %d|%p1, %a, 3, 6175, -1;"),
        &lanes(&|l| ((l & !7) | 3, 1)),
    );
    // down by 2 within segments of 8 (c = 0x181f): the last two lanes of each keep their own.
    check32(
        &body("shfl.sync.down.b32 %d|%p1, %a, 2, 6175, -1;"),
        &lanes(&|l| if l % 8 < 6 { (l + 2, 1) } else { (l, 0) }),
    );
    // up by 1 within segments of 16 (c = (32 - 16) << 8 = 0x1000).
    check32(
        &body("shfl.sync.up.b32 %d|%p1, %a, 1, 4096, -1;"),
        &lanes(&|l| if l % 16 >= 1 { (l - 1, 1) } else { (l, 0) }),
    );
}

#[test]
fn votes_over_the_warp() {
    // a = 1 for even lanes.
    let cases = |want: &dyn Fn(u32) -> u32| -> Vec<(u32, u32, u32, u32)> {
        (0..32)
            .map(|l| (u32::from(l % 2 == 0), u32::from(l < 32), 0, want(l)))
            .collect()
    };
    check32(
        "setp.ne.u32 %p1, %a, 0;\nvote.sync.ballot.b32 %d, %p1, -1;",
        &cases(&|_| 0x5555_5555),
    );
    check32(
        "setp.ne.u32 %p1, %a, 0;\nvote.sync.ballot.b32 %d, !%p1, -1;",
        &cases(&|_| 0xaaaa_aaaa),
    );
    check32(
        "setp.ne.u32 %p1, %a, 0;\nvote.sync.any.pred %p2, %p1, -1;\nselp.u32 %d, 1, 0, %p2;",
        &cases(&|_| 1),
    );
    check32(
        "setp.ne.u32 %p1, %a, 0;\nvote.sync.all.pred %p2, %p1, -1;\nselp.u32 %d, 1, 0, %p2;",
        &cases(&|_| 0),
    );
    check32(
        "setp.ne.u32 %p1, %b, 0;\nvote.sync.all.pred %p2, %p1, -1;\nselp.u32 %d, 1, 0, %p2;",
        &cases(&|_| 1),
    );
    check32(
        "setp.ne.u32 %p1, %a, 0;\nvote.sync.uni.pred %p2, %p1, -1;\nselp.u32 %d, 1, 0, %p2;",
        &cases(&|_| 0),
    );
}

#[test]
fn bit_field_insert_extract_and_byte_permute() {
    // bfi: 4 bits of a at position 8 of b.
    check32(
        "bfi.b32 %d, %a, %b, 8, 4;",
        &[
            (0xffff_fff5, 0, 0, 0x0000_0500),
            (0x3, 0xffff_ffff, 0, 0xffff_f3ff),
        ],
    );
    // A field running past bit 31 is cut there; length 0 leaves b.
    check32("bfi.b32 %d, %a, %b, 30, 8;", &[(0xff, 0, 0, 0xc000_0000)]);
    check32("bfi.b32 %d, %a, %b, 4, 0;", &[(0xff, 0x1234, 0, 0x1234)]);
    check64(
        "bfi.b64 %d, %a, %b, 32, 32;",
        &[(0x1122_3344, 0x5566_7788, 0, 0x1122_3344_5566_7788)],
    );
    // bfe: unsigned zero-fills, signed replicates the field's top bit.
    check32("bfe.u32 %d, %a, 4, 8;", &[(0x0000_0ab0, 0, 0, 0xab)]);
    check32(
        "bfe.s32 %d, %a, 4, 8;",
        &[(0x0000_0ab0, 0, 0, 0xffff_ffab), (0x0000_07b0, 0, 0, 0x7b)],
    );
    // Past the msb, bits read as the sign (signed) or zero (unsigned).
    check32(
        "bfe.s32 %d, %a, 28, 8;",
        &[(0x8000_0000, 0, 0, 0xffff_fff8)],
    );
    check32("bfe.u32 %d, %a, 28, 8;", &[(0x8000_0000, 0, 0, 0x8)]);
    // prmt: selector nibbles pick bytes of {b, a}; 8 in a nibble replicates that byte's sign
    // (in the last case the other nibbles, 0, copy byte 0 itself).
    check32(
        "prmt.b32 %d, %a, %b, %c;",
        &[
            (0x4433_2211, 0x8877_6655, 0x3210, 0x4433_2211),
            (0x4433_2211, 0x8877_6655, 0x7654, 0x8877_6655),
            (0x4433_2211, 0x8877_6655, 0x0415, 0x1155_2266),
            (0x0000_0080, 0, 0x0008, 0x8080_80ff),
        ],
    );
}

#[test]
fn lop3_applies_its_truth_table_and_activemask_sees_converged_lanes() {
    // lut = F(0xF0, 0xCC, 0xAA): a & b & c is 0x80, a ^ b ^ c is 0x96, (a & b) | c is 0xEA.
    let (a, b, c) = (0xff00_ff00u32, 0xf0f0_f0f0u32, 0xcccc_cccc);
    check32("lop3.b32 %d, %a, %b, %c, 0x80;", &[(a, b, c, a & b & c)]);
    check32("lop3.b32 %d, %a, %b, %c, 0x96;", &[(a, b, c, a ^ b ^ c)]);
    check32("lop3.b32 %d, %a, %b, %c, 0xea;", &[(a, b, c, (a & b) | c)]);
    // Threads with a == 1 branch away; the rest execute activemask together.
    let cases: Vec<_> = (0..8u32)
        .map(|t| {
            let odd = t % 2;
            (odd, 0, 0, if odd == 1 { 7 } else { 0x55 })
        })
        .collect();
    check32(
        "setp.eq.u32 %p1, %a, 1;\n@%p1 bra $L_odd;\nactivemask.b32 %d;\nbra.uni $L_done;\n$L_odd:\nmov.u32 %d, 7;\n$L_done:",
        &cases,
    );
}

#[test]
fn redux_reduces_over_the_warp() {
    // a = lane - 16 as s32 in each of 32 lanes.
    let cases = |want: u32| -> Vec<(u32, u32, u32, u32)> {
        (0..32u32)
            .map(|l| (l.wrapping_sub(16), 1 << (l % 8), 0, want))
            .collect()
    };
    // sum of -16..15 = -16
    check32("redux.sync.add.s32 %d, %a, -1;", &cases(-16i32 as u32));
    check32("redux.sync.min.s32 %d, %a, -1;", &cases(-16i32 as u32));
    check32("redux.sync.max.s32 %d, %a, -1;", &cases(15));
    // unsigned: -1 (lane 15) is the largest, 0 (lane 16) the smallest
    check32("redux.sync.max.u32 %d, %a, -1;", &cases(0xffff_ffff));
    check32("redux.sync.min.u32 %d, %a, -1;", &cases(0));
    check32("redux.sync.or.b32 %d, %b, -1;", &cases(0xff));
    check32("redux.sync.and.b32 %d, %b, -1;", &cases(0));
    // each bit of b is set in 4 lanes: xor cancels
    check32("redux.sync.xor.b32 %d, %b, -1;", &cases(0));
}

/// A CTA of three warpgroups (launch bounds 384 threads and one CTA: 168 registers per
/// thread) whose first warpgroup runs `setmaxnreg.{first}` and the other two
/// `setmaxnreg.{rest}` (`("dec", 40)`: `.dec` to 40), each thread then storing its index;
/// `bounds` false leaves the launch bounds out. The run's error, if any.
fn setmaxnreg_cta(first: (&str, u32), rest: (&str, u32), bounds: bool) -> Result<(), String> {
    setmaxnreg_split(first, rest, bounds, 128)
}

/// [`setmaxnreg_cta`] with the first `split` threads running `first`.
fn setmaxnreg_split(
    first: (&str, u32),
    rest: (&str, u32),
    bounds: bool,
    split: u32,
) -> Result<(), String> {
    let bounds = if bounds {
        ".maxntid 384, 1, 1\n.minnctapersm 1\n"
    } else {
        ""
    };
    let text = format!(
        ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry t(.param .u64 pout)\n\
         {bounds}{{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\n.reg .b64 %rd<4>;\n\
         mov.u32 %r1, %tid.x;\nsetp.lt.u32 %p1, %r1, {split};\n@%p1 bra FIRST;\n\
         setmaxnreg.{}.sync.aligned.u32 {};\nbra DONE;\nFIRST:\n\
         setmaxnreg.{}.sync.aligned.u32 {};\nDONE:\nld.param.u64 %rd1, [pout];\n\
         mul.wide.u32 %rd2, %r1, 4;\nadd.s64 %rd3, %rd1, %rd2;\nst.global.u32 [%rd3], %r1;\n\
         ret;\n}}\n",
        rest.0, rest.1, first.0, first.1
    );
    let m = PtxModule {
        name: "setmaxnreg",
        ptx: Box::leak(text.into_boxed_str()),
    };
    let d = PtxSim::new();
    let out = d.alloc(4 * 384).unwrap();
    d.launch(
        &m,
        "t",
        LaunchConfig::linear(1, 384),
        &[KernelArg::Ptr(out)],
    )
    .and_then(|()| d.synchronize())
    .map_err(|e| e.to_string())?;
    let mut got = vec![0u8; 4 * 384];
    d.download(out, &mut got).unwrap();
    for (t, c) in got.chunks(4).enumerate() {
        assert_eq!(u32::from_le_bytes(c.try_into().unwrap()), t as u32);
    }
    Ok(())
}

#[test]
fn setmaxnreg_moves_registers_through_the_ctas_pool() {
    // 168 registers a thread at launch (65,536 / 384, in units of 8). The first warpgroup
    // gives 128 x 128 back; the other two take 256 x 64 of them: all of them.
    setmaxnreg_cta(("dec", 40), ("inc", 232), true).unwrap();
    // An inc waits for the decs of warps that run after it: the first warpgroup asks for
    // 128 x 64 before the others have given 256 x 64 back.
    setmaxnreg_cta(("inc", 232), ("dec", 104), true).unwrap();
    // 256 x 72 asked, 128 x 128 given: the incs wait forever.
    let e = setmaxnreg_cta(("dec", 40), ("inc", 240), true).unwrap_err();
    assert!(
        e.contains("deadlock") && e.contains("`setmaxnreg.inc.sync.aligned.u32 240;`"),
        "{e}"
    );
    // Decs that give nothing back leave the first warpgroup's inc waiting for ever.
    let e = setmaxnreg_cta(("inc", 176), ("dec", 168), true).unwrap_err();
    assert!(
        e.contains("deadlock") && e.contains("`setmaxnreg.inc.sync.aligned.u32 176;`"),
        "{e}"
    );
    // A dec above, or an inc below, what the warp holds; an entry without launch bounds.
    let e = setmaxnreg_cta(("dec", 176), ("inc", 168), true).unwrap_err();
    assert!(
        e.contains("setmaxnreg.dec to 176 registers, more than the warp's 168"),
        "{e}"
    );
    let e = setmaxnreg_cta(("inc", 160), ("dec", 168), true).unwrap_err();
    assert!(
        e.contains("setmaxnreg.inc to 160 registers, fewer than the warp's 168"),
        "{e}"
    );
    let e = setmaxnreg_cta(("dec", 40), ("inc", 232), false).unwrap_err();
    assert!(e.contains("without .maxntid and .minnctapersm"), "{e}");
    // The whole warpgroup runs the same setmaxnreg, or the behaviour is undefined: the
    // fourth warp of the first warpgroup on the others' path.
    setmaxnreg_split(("dec", 40), ("dec", 104), true, 128).unwrap();
    let e = setmaxnreg_split(("dec", 40), ("dec", 104), true, 96).unwrap_err();
    assert!(
        e.contains("warp 3 of warpgroup 0 issued a different setmaxnreg sequence"),
        "{e}"
    );
}
