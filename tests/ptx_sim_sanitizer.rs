//! Each sanitizer check of the PTX interpreter, triggered by a deliberately broken kernel:
//! out-of-bounds and misaligned accesses, reads of fresh memory, uninitialised registers,
//! shared-memory races (RAW and WAR), cp.async reads before the wait, deadlocks, and
//! malformed modules or launches.
#![cfg(feature = "ptx-sim")]

use tarflow::gpu::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

const VEC_ADD: PtxModule = PtxModule {
    name: "vec_add",
    ptx: include_str!("ptx-fixtures/vec_add.ptx"),
};
const BLOCK_REDUCE: PtxModule = PtxModule {
    name: "block_reduce",
    ptx: include_str!("ptx-fixtures/block_reduce.ptx"),
};
const GEMM: PtxModule = PtxModule {
    name: "gemm_tiled",
    ptx: include_str!("ptx-fixtures/gemm_tiled.ptx"),
};

/// A one-kernel module `k` with the given parameters, register declarations and body.
fn module(name: &'static str, params: &str, body: &str) -> PtxModule {
    let text = format!(
        ".version 9.0\n.target sm_80\n.address_size 64\n\n.visible .entry k({params})\n{{\n\
         \t.reg .pred %p<8>;\n\t.reg .b32 %r<16>;\n\t.reg .b64 %rd<16>;\n\t.reg .f32 %f<8>;\n\
         {body}\n}}\n"
    );
    PtxModule {
        name,
        ptx: Box::leak(text.into_boxed_str()),
    }
}

fn buf(d: &PtxSim, v: &[f32]) -> DevicePtr {
    let p = d.alloc(v.len() * 4).unwrap();
    d.upload(p, bytemuck::cast_slice(v)).unwrap();
    p
}

fn launch_err(d: &PtxSim, m: &PtxModule, k: &str, cfg: LaunchConfig, args: &[KernelArg]) -> String {
    match d.launch(m, k, cfg, args) {
        Ok(()) => panic!("kernel {k} ran without the expected error"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
}

#[test]
fn out_of_bounds_global_read_names_kernel_cta_thread_and_address() {
    let d = PtxSim::new();
    let n = 100;
    let (a, b) = (buf(&d, &vec![1.0; n]), buf(&d, &vec![2.0; n]));
    let y = d.alloc(n * 4).unwrap();
    let msg = launch_err(
        &d,
        &VEC_ADD,
        "vec_add_oob",
        LaunchConfig::linear(1, 128),
        &[
            KernelArg::Ptr(a),
            KernelArg::Ptr(b),
            KernelArg::Ptr(y),
            KernelArg::U32(n as u32),
        ],
    );
    let addr = format!("0x{:x}", a.0 + 400);
    assert_has(
        &msg,
        &[
            "vec_add_oob",
            "CTA (0, 0, 0)",
            "thread (100, 0, 0)",
            &addr,
            "outside the allocation",
            "ld.global",
        ],
    );
}

#[test]
fn fresh_memory_reads_as_nan() {
    let d = PtxSim::new();
    let n = 40;
    let a = buf(&d, &vec![1.0; n]);
    let y = d.alloc(n * 4).unwrap(); // never uploaded: the kernel's `y += a` reads poison
    d.launch(
        &VEC_ADD,
        "accumulate_uninit",
        LaunchConfig::linear(1, 64),
        &[
            KernelArg::Ptr(a),
            KernelArg::Ptr(y),
            KernelArg::U32(n as u32),
        ],
    )
    .unwrap();
    let mut out = vec![0f32; n];
    d.download(y, bytemuck::cast_slice_mut(&mut out)).unwrap();
    assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
}

#[test]
fn misaligned_global_load_is_an_error() {
    let d = PtxSim::new();
    let a = buf(&d, &[1.0; 8]);
    let y = d.alloc(32).unwrap();
    let msg = launch_err(
        &d,
        &VEC_ADD,
        "misaligned_load",
        LaunchConfig::linear(1, 32),
        &[KernelArg::Ptr(a), KernelArg::Ptr(y), KernelArg::U32(4)],
    );
    assert_has(
        &msg,
        &[
            "misaligned_load",
            "misaligned 4-byte load",
            &format!("0x{:x}", a.0 + 2),
        ],
    );
}

#[test]
fn missing_barrier_between_shared_write_and_read_is_a_race() {
    let d = PtxSim::new();
    let x = buf(&d, &[1.0; 256]);
    let out = d.alloc(4).unwrap();
    let msg = launch_err(
        &d,
        &BLOCK_REDUCE,
        "block_sum_racy",
        LaunchConfig::linear(1, 256),
        &[KernelArg::Ptr(x), KernelArg::Ptr(out), KernelArg::U32(256)],
    );
    // Warp 0 reads partial[1] before warp 1 (thread 32) writes it.
    assert_has(
        &msg,
        &[
            "block_sum_racy",
            "shared-memory race",
            "thread 32 (warp 1)",
            "(warp 0)",
        ],
    );
    assert!(
        d.last_counters().is_none(),
        "a failed launch reports no counters"
    );
    // The same reduction with its barrier is clean.
    d.launch(
        &BLOCK_REDUCE,
        "block_sum",
        LaunchConfig::linear(1, 256),
        &[KernelArg::Ptr(x), KernelArg::Ptr(out), KernelArg::U32(256)],
    )
    .unwrap();
}

fn gemm_args(d: &PtxSim, m: usize, n: usize, k: usize) -> Vec<KernelArg> {
    let a = buf(d, &vec![0.5; m * k]);
    let b = buf(d, &vec![0.25; k * n]);
    let c = d.alloc(m * n * 4).unwrap();
    vec![
        KernelArg::Ptr(a),
        KernelArg::Ptr(b),
        KernelArg::Ptr(c),
        KernelArg::U32(m as u32),
        KernelArg::U32(n as u32),
        KernelArg::U32(k as u32),
    ]
}

#[test]
fn missing_write_after_read_barrier_is_a_race_with_three_k_tiles() {
    let d = PtxSim::new();
    let cfg = LaunchConfig {
        grid: (2, 2, 1),
        block: (16, 16, 1),
        shared_bytes: 0,
    };
    let args = gemm_args(&d, 20, 20, 48);
    let msg = launch_err(&d, &GEMM, "gemm_tiled_no_war_barrier", cfg, &args);
    // Warp 0 runs ahead into the next k-tile and overwrites the tile; warp 1 then reads it
    // in the same barrier interval.
    assert_has(
        &msg,
        &[
            "gemm_tiled_no_war_barrier",
            "shared-memory race",
            "(warp 1) reads it after",
            "(warp 0) wrote it",
        ],
    );
    // A single k-tile has no second write, so no race: the detector flags real hazards only.
    let args = gemm_args(&d, 20, 20, 16);
    d.launch(&GEMM, "gemm_tiled_no_war_barrier", cfg, &args)
        .unwrap();
}

#[test]
fn reading_an_unset_register_is_an_error() {
    let d = PtxSim::new();
    let m = module(
        "uninit_reg",
        ".param .u64 out",
        "\tld.param.u64 %rd1, [out];\n\tadd.s32 %r2, %r1, 1;\n\tst.global.u32 [%rd1], %r2;\n\tret;",
    );
    let out = d.alloc(4).unwrap();
    let msg = launch_err(
        &d,
        &m,
        "k",
        LaunchConfig::linear(1, 1),
        &[KernelArg::Ptr(out)],
    );
    assert_has(&msg, &["register %r1 before anything wrote it", "add.s32"]);
}

#[test]
fn out_of_bounds_shared_store_is_an_error() {
    let d = PtxSim::new();
    let m = module(
        "oob_shared",
        "",
        "\t.shared .align 4 .b8 tile[64];\n\tmov.u32 %r1, %tid.x;\n\tshl.b32 %r2, %r1, 2;\n\
         \tmov.u32 %r3, tile;\n\tadd.s32 %r4, %r3, %r2;\n\tmov.f32 %f1, 0f3F800000;\n\
         \tst.shared.f32 [%r4], %f1;\n\tret;",
    );
    let msg = launch_err(&d, &m, "k", LaunchConfig::linear(1, 32), &[]);
    assert_has(
        &msg,
        &[
            "thread (16, 0, 0)",
            "shared address 0x40",
            "outside the CTA's 64 bytes",
        ],
    );
}

#[test]
fn reading_a_cp_async_destination_before_the_wait_is_an_error() {
    let body = |wait: &str| {
        format!(
            "\t.shared .align 16 .b8 tile[512];\n\tld.param.u64 %rd1, [src];\n\
             \tld.param.u64 %rd2, [dst];\n\tmov.u32 %r1, %tid.x;\n\tshl.b32 %r2, %r1, 4;\n\
             \tmov.u32 %r3, tile;\n\tadd.s32 %r4, %r3, %r2;\n\tcvt.u64.u32 %rd3, %r2;\n\
             \tadd.s64 %rd4, %rd1, %rd3;\n\tcp.async.cg.shared.global [%r4], [%rd4], 16;\n\
             \tcp.async.commit_group;\n{wait}\tld.shared.f32 %f1, [%r4];\n\
             \tadd.s64 %rd5, %rd2, %rd3;\n\tst.global.f32 [%rd5], %f1;\n\tret;"
        )
    };
    let d = PtxSim::new();
    let src = buf(&d, &(0..128).map(|i| i as f32).collect::<Vec<_>>());
    let dst = d.alloc(512).unwrap();
    let args = [KernelArg::Ptr(src), KernelArg::Ptr(dst)];
    let broken = module("cp_no_wait", ".param .u64 src, .param .u64 dst", &body(""));
    let msg = launch_err(&d, &broken, "k", LaunchConfig::linear(1, 32), &args);
    assert_has(&msg, &["cp.async not yet waited for", "ld.shared.f32"]);
    let fixed = module(
        "cp_wait",
        ".param .u64 src, .param .u64 dst",
        &body("\tcp.async.wait_group 0;\n"),
    );
    d.launch(&fixed, "k", LaunchConfig::linear(1, 32), &args)
        .unwrap();
    let mut out = vec![0f32; 128];
    d.download(dst, bytemuck::cast_slice_mut(&mut out)).unwrap();
    // Each thread copied 16 bytes and read back the first float of them.
    for t in 0..32 {
        assert_eq!(out[4 * t], (4 * t) as f32);
    }
}

#[test]
fn a_shuffle_that_one_lane_never_reaches_is_a_deadlock() {
    let d = PtxSim::new();
    let m = module(
        "deadlock",
        "",
        "\tmov.u32 %r1, %laneid;\n\tsetp.eq.u32 %p1, %r1, 0;\n\t@%p1 bra $L_wait;\n\
         \tshfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;\n\tret;\n$L_wait:\n\tbar.sync 0;\n\tret;",
    );
    let msg = launch_err(&d, &m, "k", LaunchConfig::linear(1, 32), &[]);
    assert_has(&msg, &["deadlock", "shfl.sync"]);
}

#[test]
fn lanes_that_exit_early_do_not_block_a_collective() {
    // nvcc's shape: lanes past the end return, the rest shuffle with a full mask. Exited
    // lanes leave the member set, so this must not deadlock.
    let d = PtxSim::new();
    let m = module(
        "early_exit",
        ".param .u64 out",
        "\tld.param.u64 %rd1, [out];\n\tmov.u32 %r1, %laneid;\n\tsetp.gt.u32 %p1, %r1, 15;\n\
         \t@%p1 bra $L_done;\n\tshfl.sync.down.b32 %r2|%p2, %r1, 1, 15, -1;\n\
         \tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\tst.global.u32 [%rd3], %r2;\n\
         $L_done:\n\tret;",
    );
    let out = d.alloc(64).unwrap();
    d.launch(&m, "k", LaunchConfig::linear(1, 32), &[KernelArg::Ptr(out)])
        .unwrap();
    let mut got = [0u32; 16];
    d.download(out, bytemuck::cast_slice_mut(&mut got)).unwrap();
    // shfl.down by 1 with clamp 15: lane 15 keeps its own value.
    let want: Vec<u32> = (0..16).map(|l| if l < 15 { l + 1 } else { 15 }).collect();
    assert_eq!(got.to_vec(), want);
}

#[test]
fn malformed_modules_name_the_line_and_instruction() {
    let d = PtxSim::new();
    let unknown = module("bad_op", "", "\tfrobnicate.u32 %r1, %r2;\n\tret;");
    let msg = d
        .launch(&unknown, "k", LaunchConfig::linear(1, 1), &[])
        .unwrap_err()
        .to_string();
    assert_has(
        &msg,
        &[
            "bad_op",
            "line 11",
            "unknown instruction frobnicate",
            "`frobnicate.u32 %r1, %r2;`",
        ],
    );
    let modifier = module("bad_mod", "", "\tadd.sat.u32 %r1, %r2, %r3;\n\tret;");
    let msg = d
        .launch(&modifier, "k", LaunchConfig::linear(1, 1), &[])
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["unsupported modifier(s) .sat", "add.sat.u32"]);
    let label = module("bad_label", "", "\tbra $L_nowhere;\n\tret;");
    let msg = d
        .launch(&label, "k", LaunchConfig::linear(1, 1), &[])
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["unknown label $L_nowhere"]);
}

#[test]
fn bad_launches_are_errors() {
    let d = PtxSim::new();
    let p = d.alloc(4).unwrap();
    let msg = d
        .launch(&VEC_ADD, "no_such_kernel", LaunchConfig::linear(1, 1), &[])
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["no kernel no_such_kernel", "vec_add"]);
    let msg = d
        .launch(
            &VEC_ADD,
            "vec_add",
            LaunchConfig::linear(1, 1),
            &[KernelArg::Ptr(p)],
        )
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["takes 4 parameters, given 1"]);
    let args = [
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::U64(1),
    ];
    let msg = d
        .launch(&VEC_ADD, "vec_add", LaunchConfig::linear(1, 1), &args)
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["vec_add_param_3 is 4 bytes"]);
    let args = [
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::Ptr(p),
        KernelArg::U32(1),
    ];
    let msg = d
        .launch(&VEC_ADD, "vec_add", LaunchConfig::linear(1, 2048), &args)
        .unwrap_err()
        .to_string();
    assert_has(&msg, &["at most 1024 threads"]);
    assert!(d.free(DevicePtr(p.0 + 4)).is_err());
    d.free(p).unwrap();
    assert!(d.upload(p, &[0; 4]).is_err(), "freed memory is gone");
}

#[test]
fn misaligned_shared_access_names_the_address() {
    let d = PtxSim::new();
    let m = module(
        "misaligned_shared",
        "",
        "\t.shared .align 4 .b8 tile[64];\n\tmov.u32 %r1, tile;\n\tadd.s32 %r2, %r1, 6;\n\
         \tmov.f32 %f1, 0f3F800000;\n\tst.shared.f32 [%r2], %f1;\n\tret;",
    );
    let msg = launch_err(&d, &m, "k", LaunchConfig::linear(1, 1), &[]);
    assert_has(
        &msg,
        &[
            "CTA (0, 0, 0)",
            "thread (0, 0, 0)",
            "misaligned 4-byte store to shared address 0x6",
        ],
    );
}
