//! Warp-level matrix instructions (ldmatrix, mma.m16n8k16) checked against hand-worked
//! fragments from the PTX ISA's figures; memory instructions (widths, vectors, atomics,
//! generic addressing, cp.async with a partial source) and the bank-conflict counter.
#![cfg(feature = "ptx-sim")]
// Fragment tables read best indexed by lane, row and column, as the ISA writes them.
#![allow(clippy::needless_range_loop)]

use tarflow::gpu::sim::counters::bank_conflicts;
use tarflow::gpu::sim::warp_ops::{ldmatrix_fragment, mma_m16n8k16};
use tarflow::gpu::{Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

fn module(name: &'static str, params: &str, body: &str) -> PtxModule {
    let text = format!(
        ".version 9.0\n.target sm_80\n.address_size 64\n.visible .entry k({params})\n{{\n\
         .reg .pred %p<8>;\n.reg .b32 %r<32>;\n.reg .b64 %rd<16>;\n.reg .f32 %f<8>;\n\
         .reg .b16 %h<8>;\n{body}\n}}\n"
    );
    PtxModule {
        name,
        ptx: Box::leak(text.into_boxed_str()),
    }
}

/// Runs `body` with `out` (u32 words, pre-zeroed) on one CTA of `threads`; returns `out`.
fn run_out(body: &str, threads: u32, words: usize) -> Vec<u32> {
    let d = PtxSim::new();
    let m = module("t", ".param .u64 out", body);
    let out = d.alloc(words * 4).unwrap();
    d.upload(out, &vec![0u8; words * 4]).unwrap();
    d.launch(
        &m,
        "k",
        LaunchConfig::linear(1, threads),
        &[KernelArg::Ptr(out)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut v = vec![0u32; words];
    d.download(out, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

#[test]
fn ldmatrix_fragments_match_the_isa_figure() {
    // Element (r, c) of the 8x8 matrix holds 8 r + c.
    let mut rows = [[0u16; 8]; 8];
    for (r, row) in rows.iter_mut().enumerate() {
        for (c, e) in row.iter_mut().enumerate() {
            *e = (8 * r + c) as u16;
        }
    }
    // Figure "ldmatrix fragment": thread 0 holds (0,0),(0,1); thread 5 row 1, cols 2, 3;
    // thread 31 row 7, cols 6, 7.
    assert_eq!(ldmatrix_fragment(&rows, 0, false), 1 << 16);
    assert_eq!(ldmatrix_fragment(&rows, 5, false), 10 | 11 << 16);
    assert_eq!(ldmatrix_fragment(&rows, 31, false), 62 | 63 << 16);
    // With .trans, thread t holds column t / 4, rows 2 (t % 4) and 2 (t % 4) + 1.
    assert_eq!(ldmatrix_fragment(&rows, 0, true), 8 << 16);
    assert_eq!(ldmatrix_fragment(&rows, 5, true), 17 | 25 << 16);
    assert_eq!(ldmatrix_fragment(&rows, 31, true), 55 | 63 << 16);
}

/// A kernel: thread t writes b16 value t * 8 + j at shared byte 16 t + 2 j (256 rows of 8),
/// then each lane points at row `rowsel(lane)` and ldmatrix.x4 loads; each lane stores its
/// 4 registers.
fn ldmatrix_kernel(trans: bool) -> Vec<u32> {
    let t = if trans { ".trans" } else { "" };
    let body = format!(
        ".shared .align 16 .b8 tile[512];\nld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n\
         mov.u32 %r2, tile;\nshl.b32 %r3, %r1, 4;\nadd.s32 %r4, %r2, %r3;\nshl.b32 %r5, %r1, 3;\n\
         cvt.u16.u32 %h1, %r5;\nst.shared.u16 [%r4], %h1;\nadd.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+2], %h1;\n\
         add.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+4], %h1;\nadd.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+6], %h1;\n\
         add.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+8], %h1;\nadd.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+10], %h1;\n\
         add.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+12], %h1;\nadd.u16 %h1, %h1, 1;\nst.shared.u16 [%r4+14], %h1;\n\
         bar.sync 0;\n\
         // lane l points at row 31 - l (rows reversed), so matrix i row r is row 31 - (8 i + r).\n\
         mov.u32 %r6, 31;\nsub.s32 %r7, %r6, %r1;\nshl.b32 %r8, %r7, 4;\nadd.s32 %r9, %r2, %r8;\n\
         ldmatrix.sync.aligned.m8n8.x4{t}.shared.b16 {{%r10, %r11, %r12, %r13}}, [%r9];\n\
         mul.wide.u32 %rd2, %r1, 16;\nadd.s64 %rd3, %rd1, %rd2;\n\
         st.global.v4.u32 [%rd3], {{%r10, %r11, %r12, %r13}};\nret;"
    );
    run_out(&body, 32, 128)
}

#[test]
fn ldmatrix_x4_in_a_kernel_takes_row_addresses_from_the_right_lanes() {
    // Shared row q holds values 8 q .. 8 q + 7. Matrix i row r comes from lane 8 i + r,
    // which points at row 31 - (8 i + r); so element (r, c) of matrix i is 8 (31 - 8 i - r) + c.
    let elem = |i: u32, r: u32, c: u32| 8 * (31 - 8 * i - r) + c;
    let plain = ldmatrix_kernel(false);
    let trans = ldmatrix_kernel(true);
    for lane in 0..32u32 {
        for i in 0..4u32 {
            let (g, q) = (lane / 4, 2 * (lane % 4));
            let want = elem(i, g, q) | elem(i, g, q + 1) << 16;
            assert_eq!(
                plain[(4 * lane + i) as usize],
                want,
                "lane {lane} matrix {i}"
            );
            let want_t = elem(i, q, g) | elem(i, q + 1, g) << 16;
            assert_eq!(
                trans[(4 * lane + i) as usize],
                want_t,
                "trans lane {lane} matrix {i}"
            );
        }
    }
    // One hand-worked value: lane 5, matrix 2 (rows from lanes 16..23 -> shared rows 15..8):
    // row 1 -> shared row 14, cols 2, 3 -> 114, 115.
    assert_eq!(plain[4 * 5 + 2], 114 | 115 << 16);
}

fn bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// Packs A (16 x 16), B (16 x 8, k x n) and C (16 x 8) into per-lane fragments following
/// the ISA's tables for mma.m16n8k16 with .bf16 inputs.
#[allow(clippy::type_complexity)]
fn fragments(
    a: &[[f32; 16]; 16],
    b: &[[f32; 8]; 16],
    c: &[[f32; 8]; 16],
) -> ([[u32; 4]; 32], [[u32; 2]; 32], [[f32; 4]; 32]) {
    let mut fa = [[0u32; 4]; 32];
    let mut fb = [[0u32; 2]; 32];
    let mut fc = [[0f32; 4]; 32];
    for lane in 0..32usize {
        let (g, t) = (lane / 4, lane % 4);
        // a0,a1: (g, 2t..2t+1); a2,a3: (g+8, 2t..); a4,a5: (g, 2t+8..); a6,a7: (g+8, 2t+8..)
        let arow = [g, g + 8, g, g + 8];
        let acol = [2 * t, 2 * t, 2 * t + 8, 2 * t + 8];
        for reg in 0..4 {
            let lo = bf16(a[arow[reg]][acol[reg]]) as u32;
            let hi = bf16(a[arow[reg]][acol[reg] + 1]) as u32;
            fa[lane][reg] = lo | hi << 16;
        }
        // b0,b1: (k = 2t..2t+1, n = g); b2,b3: (k = 2t+8.., n = g)
        for reg in 0..2 {
            let k = 2 * t + 8 * reg;
            fb[lane][reg] = bf16(b[k][g]) as u32 | (bf16(b[k + 1][g]) as u32) << 16;
        }
        // c0,c1: (g, 2t..2t+1); c2,c3: (g+8, 2t..)
        fc[lane] = [
            c[g][2 * t],
            c[g][2 * t + 1],
            c[g + 8][2 * t],
            c[g + 8][2 * t + 1],
        ];
    }
    (fa, fb, fc)
}

#[test]
fn mma_m16n8k16_with_identity_a_returns_b_plus_c_at_the_isa_positions() {
    let mut a = [[0f32; 16]; 16];
    for (i, row) in a.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    let mut b = [[0f32; 8]; 16];
    for (k, row) in b.iter_mut().enumerate() {
        for (n, e) in row.iter_mut().enumerate() {
            *e = (8 * k + n) as f32;
        }
    }
    let c = [[0.5f32; 8]; 16];
    let (fa, fb, fc) = fragments(&a, &b, &c);
    let d = mma_m16n8k16(&fa, &fb, &fc, true);
    // Figure "MMA .m16n8k16 fragment layout for accumulator matrix C/D": lane 0 holds
    // (0,0), (0,1), (8,0), (8,1); lane 5 (group 1, thread 1) holds (1,2), (1,3), (9,2), (9,3);
    // lane 31 holds (7,6), (7,7), (15,6), (15,7). D = B + 0.5.
    assert_eq!(d[0], [0.5, 1.5, 64.5, 65.5]);
    assert_eq!(d[5], [10.5, 11.5, 74.5, 75.5]);
    assert_eq!(d[31], [62.5, 63.5, 126.5, 127.5]);
}

#[test]
fn mma_m16n8k16_matches_a_plain_matrix_product() {
    let mut a = [[0f32; 16]; 16];
    let mut b = [[0f32; 8]; 16];
    let mut c = [[0f32; 8]; 16];
    for i in 0..16 {
        for k in 0..16 {
            a[i][k] = ((i * 7 + k * 3) % 11) as f32 * 0.25 - 1.0;
        }
        for n in 0..8 {
            b[i][n] = ((i * 5 + n * 13) % 9) as f32 * 0.125 - 0.5;
            c[i][n] = (i as f32) - (n as f32) * 0.5;
        }
    }
    let (fa, fb, fc) = fragments(&a, &b, &c);
    let d = mma_m16n8k16(&fa, &fb, &fc, true);
    for lane in 0..32 {
        let (g, t) = (lane / 4, lane % 4);
        let pos = [
            (g, 2 * t),
            (g, 2 * t + 1),
            (g + 8, 2 * t),
            (g + 8, 2 * t + 1),
        ];
        for (i, &(r, n)) in pos.iter().enumerate() {
            // All values are small dyadic rationals: the product is exact in f32.
            let want: f32 = (0..16).map(|k| a[r][k] * b[k][n]).sum::<f32>() + c[r][n];
            assert_eq!(d[lane][i], want, "lane {lane} element {i}");
        }
    }
    // The f16 path reads the same bits as IEEE half: 1.0 = 0x3c00.
    let mut ones_a = [[0u32; 4]; 32];
    let mut ones_b = [[0u32; 2]; 32];
    for l in 0..32 {
        ones_a[l] = [0x3c00_3c00; 4];
        ones_b[l] = [0x3c00_3c00; 2];
    }
    let d = mma_m16n8k16(&ones_a, &ones_b, &[[0.0; 4]; 32], false);
    assert!(d.iter().all(|l| l.iter().all(|&v| v == 16.0)));
}

#[test]
fn loads_and_stores_of_every_width_and_vector() {
    // Store bytes, halves, words and a v4, read them back with sign/zero extension.
    let body = "ld.param.u64 %rd1, [out];\n\
        mov.u32 %r1, 0xfffffe80;\nst.global.u8 [%rd1], %r1;\nst.global.u16 [%rd1+2], %r1;\n\
        ld.global.s8 %r2, [%rd1];\nld.global.u8 %r3, [%rd1];\nld.global.s16 %r4, [%rd1+2];\n\
        ld.global.u16 %r5, [%rd1+2];\n\
        st.global.v4.u32 [%rd1+16], {%r2, %r3, %r4, %r5};\n\
        ld.global.v2.u32 {%r6, %r7}, [%rd1+24];\n\
        mov.b64 %rd2, {%r6, %r7};\nst.global.u64 [%rd1+32], %rd2;\n\
        ld.global.nc.v4.f32 {%f1, %f2, %f3, %f4}, [%rd1+16];\n\
        st.global.v2.f32 [%rd1+40], {%f4, %f1};\nret;";
    let v = run_out(body, 1, 12);
    assert_eq!(v[0], 0xfe80_0080, "u8 at byte 0 and u16 at byte 2");
    assert_eq!(&v[4..8], &[0xffff_ff80, 0x80, 0xffff_fe80, 0xfe80]);
    assert_eq!(&v[8..10], &[0xffff_fe80, 0xfe80], "v2 load then u64 store");
    assert_eq!(
        &v[10..12],
        &[0xfe80, 0xffff_ff80],
        "v4 f32 bits moved as they are"
    );
}

#[test]
fn a_v4_access_must_be_aligned_to_16_bytes() {
    let d = PtxSim::new();
    let m = module(
        "misaligned_v4",
        ".param .u64 out",
        "ld.param.u64 %rd1, [out];\nld.global.v4.u32 {%r1, %r2, %r3, %r4}, [%rd1+8];\nret;",
    );
    let out = d.alloc(64).unwrap();
    let msg = d
        .launch(&m, "k", LaunchConfig::linear(1, 1), &[KernelArg::Ptr(out)])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("misaligned 16-byte load"), "{msg}");
}

#[test]
fn generic_addresses_reach_shared_memory_through_cvta() {
    let body = ".shared .align 4 .b8 s[128];\nld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n\
        mov.u64 %rd2, s;\ncvta.shared.u64 %rd3, %rd2;\nmul.wide.u32 %rd4, %r1, 4;\n\
        add.s64 %rd5, %rd3, %rd4;\nmul.lo.s32 %r2, %r1, 3;\nst.u32 [%rd5], %r2;\nbar.sync 0;\n\
        mov.u32 %r3, 31;\nsub.s32 %r4, %r3, %r1;\nmul.wide.u32 %rd6, %r4, 4;\nadd.s64 %rd7, %rd3, %rd6;\n\
        ld.u32 %r5, [%rd7];\ncvta.to.shared.u64 %rd8, %rd7;\ncvt.u32.u64 %r6, %rd8;\n\
        ld.shared.u32 %r7, [%r6];\nadd.s32 %r8, %r5, %r7;\n\
        add.s64 %rd9, %rd1, %rd4;\nst.global.u32 [%rd9], %r8;\nret;";
    let v = run_out(body, 32, 32);
    let want: Vec<u32> = (0..32).map(|t| 2 * 3 * (31 - t)).collect();
    assert_eq!(v, want);
}

#[test]
fn atomics_return_old_values_in_lane_order() {
    // Each of 32 lanes adds 1 to word 0 and records the old value: a permutation of 0..32
    // (lane order here: 0..32 exactly). cas succeeds only for the lane that finds 0.
    let body = "ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nmul.wide.u32 %rd2, %r1, 4;\n\
        add.s64 %rd3, %rd1, %rd2;\natom.global.add.u32 %r2, [%rd1], 1;\n\
        st.global.u32 [%rd3+128], %r2;\natom.global.cas.b32 %r3, [%rd1+4], 0, 7;\n\
        st.global.u32 [%rd3+256], %r3;\natom.global.inc.u32 %r4, [%rd1+8], 2;\n\
        st.global.u32 [%rd3+384], %r4;\nadd.s32 %r5, %r1, -16;\natom.global.max.s32 %r6, [%rd1+12], %r5;\n\
        atom.global.min.u32 %r6, [%rd1+16], %r5;\natom.global.exch.b32 %r7, [%rd1+20], %r1;\n\
        mov.f32 %f1, 0f3F000000;\nred.global.add.f32 [%rd1+24], %f1;\nret;";
    let v = run_out(body, 32, 128);
    assert_eq!(v[0], 32);
    assert_eq!(v[1], 7);
    assert_eq!(v[2], 32 % 3, "inc wraps to 0 after reaching 2");
    assert_eq!(v[3], 15, "signed max of -16..15");
    assert_eq!(
        v[4], 0,
        "unsigned min: lanes below 16 give huge values, 0 stays"
    );
    assert_eq!(v[5], 31, "last exchange");
    assert_eq!(f32::from_bits(v[6]), 16.0);
    assert_eq!(&v[32..64], &(0..32).collect::<Vec<u32>>()[..]);
    assert_eq!(v[64], 0);
    assert!(v[65..96].iter().all(|&x| x == 7));
    let inc: Vec<u32> = (0..32).map(|i| i % 3).collect();
    assert_eq!(&v[96..128], &inc[..]);
}

#[test]
fn shared_atomics_and_barriers_across_warps() {
    // 4 warps add to one shared float, then thread 0 publishes it after the barrier.
    let body = ".shared .align 4 .b8 acc[4];\nld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\n\
        mov.u32 %r2, acc;\nsetp.ne.u32 %p1, %r1, 0;\n@%p1 bra $L_wait;\nmov.f32 %f1, 0f00000000;\n\
        st.shared.f32 [%r2], %f1;\n$L_wait:\nbar.sync 0;\nmov.f32 %f2, 0f3F800000;\n\
        atom.shared.add.f32 %f3, [%r2], %f2;\nbar.sync 0;\n@%p1 bra $L_end;\nld.shared.f32 %f4, [%r2];\n\
        st.global.f32 [%rd1], %f4;\n$L_end:\nret;";
    let v = run_out(body, 128, 1);
    assert_eq!(f32::from_bits(v[0]), 128.0);
}

#[test]
fn bank_conflicts_count_extra_wavefronts() {
    let words = |stride: u64| -> Vec<u64> { (0..32).map(|l| l * stride * 4).collect() };
    assert_eq!(bank_conflicts(&words(1), 4), 0, "consecutive words");
    assert_eq!(bank_conflicts(&vec![64; 32], 4), 0, "one word broadcast");
    assert_eq!(
        bank_conflicts(&words(2), 4),
        1,
        "stride 2: two words per bank"
    );
    assert_eq!(
        bank_conflicts(&words(32), 4),
        31,
        "stride 32: all in bank 0"
    );
    assert_eq!(bank_conflicts(&words(33), 4), 0, "padded stride");
    let v4: Vec<u64> = (0..32).map(|l| l * 16).collect();
    assert_eq!(bank_conflicts(&v4, 16), 0, "16-byte lanes in 4 phases of 8");
    let v4_stride: Vec<u64> = (0..32).map(|l| l * 32).collect();
    assert_eq!(
        bank_conflicts(&v4_stride, 16),
        4,
        "each phase of 8 hits 4 banks twice"
    );
}

/// `cp.async.cg.shared.global [dst], [src], 16, src-size`: the first `src-size` bytes come
/// from global memory and the other `16 - src-size` are zeros (PTX ISA, "cp.async"), 0 to 16
/// of them (the bf16 GEMM's ragged edges rely on this). One thread per row of the table
/// copies 16 bytes from `src` (the bytes 1, 2, ..., 16) into its own 16 shared
/// bytes, waits, and stores them to `out`.
#[test]
fn cp_async_src_size_reads_that_many_bytes_and_zero_fills_the_rest() {
    let table: [u32; 6] = [16, 15, 8, 6, 1, 0];
    let body = "\t.shared .align 16 .b8 tile[96];\n\tld.param.u64 %rd1, [src];\n\
                \tld.param.u64 %rd2, [sizes];\n\tld.param.u64 %rd3, [out];\n\
                \tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd4, %r1, 4;\n\
                \tadd.s64 %rd5, %rd2, %rd4;\n\tld.global.u32 %r2, [%rd5];\n\
                \tmov.u32 %r3, tile;\n\tshl.b32 %r4, %r1, 4;\n\tadd.s32 %r5, %r3, %r4;\n\
                \tcp.async.cg.shared.global [%r5], [%rd1], 16, %r2;\n\
                \tcp.async.commit_group;\n\tcp.async.wait_group 0;\n\
                \tld.shared.v4.u32 {%r6, %r7, %r8, %r9}, [%r5];\n\
                \tmul.wide.u32 %rd6, %r1, 16;\n\tadd.s64 %rd7, %rd3, %rd6;\n\
                \tst.global.v4.u32 [%rd7], {%r6, %r7, %r8, %r9};\n\tret;";
    let d = PtxSim::new();
    let m = module(
        "cp_async_zfill",
        ".param .u64 src, .param .u64 sizes, .param .u64 out",
        body,
    );
    let src_bytes: Vec<u8> = (1..=16).collect();
    let src = d.alloc(16).unwrap();
    d.upload(src, &src_bytes).unwrap();
    let sizes = d.alloc(4 * table.len()).unwrap();
    d.upload(sizes, bytemuck::cast_slice(&table)).unwrap();
    let out = d.alloc(16 * table.len()).unwrap();
    d.launch(
        &m,
        "k",
        LaunchConfig::linear(1, table.len() as u32),
        &[
            KernelArg::Ptr(src),
            KernelArg::Ptr(sizes),
            KernelArg::Ptr(out),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut got = vec![0u8; 16 * table.len()];
    d.download(out, &mut got).unwrap();
    for (t, &n) in table.iter().enumerate() {
        let want: Vec<u8> = (0..16u8)
            .map(|b| if u32::from(b) < n { b + 1 } else { 0 })
            .collect();
        assert_eq!(&got[16 * t..16 * t + 16], &want[..], "src-size {n}");
    }
}

/// A `src-size` above the copy's 16 bytes is outside the instruction's contract: an error.
#[test]
fn cp_async_src_size_above_the_copy_size_is_an_error() {
    let d = PtxSim::new();
    let m = module(
        "cp_async_too_big",
        ".param .u64 src",
        "\t.shared .align 16 .b8 tile[16];\n\tld.param.u64 %rd1, [src];\n\
         \tmov.u32 %r1, tile;\n\tmov.u32 %r2, 17;\n\
         \tcp.async.cg.shared.global [%r1], [%rd1], 16, %r2;\n\tcp.async.wait_all;\n\tret;",
    );
    let src = d.alloc(32).unwrap();
    d.upload(src, &[0u8; 32]).unwrap();
    let err = d
        .launch(&m, "k", LaunchConfig::linear(1, 1), &[KernelArg::Ptr(src)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("src-size 17 above cp-size 16"), "{err}");
}
