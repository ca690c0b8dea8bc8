//! The wrappers against the committed PTX and CUDA C: every launch packs the parameters its
//! `.entry` declares, every op code matches the `.cu` enum, and sizes are checked. A driver
//! that records launches stands in for a GPU.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::*;
use crate::gpu::driver::{DevicePtr, Driver, EncodedTensorMap};
use crate::gpu::tensor_map::TensorMap;
use crate::optim::AdamWConfig;

/// One recorded launch.
#[derive(Clone, Debug)]
struct Launch {
    module: &'static str,
    kernel: String,
    config: LaunchConfig,
    args: Vec<KernelArg>,
}

/// A driver that records launches and hands out aligned, never-reused addresses.
#[derive(Default)]
struct Recorder {
    launches: Mutex<Vec<Launch>>,
    next: Mutex<u64>,
}

impl Recorder {
    fn take(&self) -> Vec<Launch> {
        std::mem::take(&mut *self.launches.lock().unwrap())
    }
    fn one(&self) -> Launch {
        let mut l = self.take();
        assert_eq!(l.len(), 1, "expected exactly one launch, got {l:?}");
        l.pop().unwrap()
    }
    fn ptr(&self) -> DevicePtr {
        self.alloc(1 << 20).unwrap()
    }
}

impl Driver for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        map.check()
            .map_err(|e| crate::Error::arg("tensor_map", e))?;
        Ok(EncodedTensorMap([0; 128]))
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let mut n = self.next.lock().unwrap();
        let p = 0x1000_0000 + *n;
        *n += (bytes as u64).div_ceil(256) * 256 + 256;
        Ok(DevicePtr(p))
    }
    fn free(&self, _: DevicePtr) -> Result<()> {
        Ok(())
    }
    fn upload(&self, _: DevicePtr, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn download(&self, _: DevicePtr, _: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.launches.lock().unwrap().push(Launch {
            module: module.name,
            kernel: kernel.to_string(),
            config,
            args: args.to_vec(),
        });
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// A PTX parameter's type, as declared: `.u64`, `.u32`, `.f32`, ...
type ParamTypes = Vec<String>;

/// The `.entry` kernels of a PTX text with their parameter types, in order.
fn entries(ptx: &str) -> BTreeMap<String, ParamTypes> {
    let mut out = BTreeMap::new();
    let mut lines = ptx.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix(".visible .entry ") else {
            continue;
        };
        let name = rest.trim_end_matches('(').trim().to_string();
        let mut params = Vec::new();
        for p in lines.by_ref() {
            let p = p.trim();
            if p.starts_with(')') {
                break;
            }
            // `.param .u64 .ptr .align 1 name,` or `.param .f32 name`: the type is the
            // second word; `.param .align 64 .b8 name[128]` (a tensor map) is an aligned
            // byte array.
            let words: Vec<&str> = p.split_whitespace().collect();
            let ty = match words.as_slice() {
                [_, ".align", a, t, name, ..] => {
                    let len = name
                        .split('[')
                        .nth(1)
                        .unwrap_or("")
                        .trim_end_matches([']', ',']);
                    format!(".align {a} {t} [{len}]")
                }
                [_, t, ..] => t.to_string(),
                _ => panic!("unreadable parameter line {p:?} of {name}"),
            };
            assert!(p.starts_with(".param"), "unexpected line {p:?} in {name}");
            params.push(ty);
        }
        out.insert(name, params);
    }
    out
}

/// Whether `arg` can be passed for a parameter declared with `ty`: the same width and the
/// same kind (pointer/integer vs float).
fn fits(arg: &KernelArg, ty: &str) -> bool {
    match arg {
        KernelArg::Ptr(_) | KernelArg::U64(_) => matches!(ty, ".u64" | ".s64" | ".b64"),
        KernelArg::U32(_) => matches!(ty, ".u32" | ".s32" | ".b32"),
        KernelArg::F32(_) => ty == ".f32",
        KernelArg::F64(_) => ty == ".f64",
        KernelArg::TensorMap(_) => ty == ".align 64 .b8 [128]",
    }
}

fn module_named(name: &str) -> &'static PtxModule {
    MODULES
        .iter()
        .copied()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no module {name}"))
}

/// Checks a launch against the committed PTX of its module; returns `module/kernel`.
fn check_signature(l: &Launch) -> String {
    let all = entries(module_named(l.module).ptx);
    let params = all
        .get(&l.kernel)
        .unwrap_or_else(|| panic!("{} has no .entry {}", l.module, l.kernel));
    assert_eq!(
        l.args.len(),
        params.len(),
        "{}: the wrapper packs {} arguments, the kernel declares {}",
        l.kernel,
        l.args.len(),
        params.len()
    );
    for (i, (a, ty)) in l.args.iter().zip(params).enumerate() {
        assert!(
            fits(a, ty),
            "{}: argument {i} is {a:?}, the kernel declares {ty}",
            l.kernel
        );
    }
    let (bx, by, bz) = l.config.block;
    assert!(
        bx * by * bz > 0 && bx * by * bz <= 1024,
        "{}: block {:?}",
        l.kernel,
        l.config.block
    );
    let (gx, gy, gz) = l.config.grid;
    assert!(
        gx >= 1 && gy >= 1 && gz >= 1,
        "{}: empty grid {:?}",
        l.kernel,
        l.config.grid
    );
    format!("{}/{}", l.module, l.kernel)
}

/// Calls every wrapper once with valid sizes (all four GEMM layouts) and returns the
/// launches.
fn launch_every_wrapper(d: &Recorder) -> Vec<Launch> {
    let p = || d.ptr();
    let shape = [3usize, 5, 7];
    let st = [35isize, 7, 1];
    let bc = [0isize, 1, 0];
    strided_copy_f32(d, p(), &st, p(), &[1, 3, 15], &shape).unwrap();
    strided_copy_bf16_f32(d, p(), &st, p(), &st, &shape).unwrap();
    strided_copy_f32_bf16(d, p(), &st, p(), &st, &shape).unwrap();
    fill_f32(d, p(), 10, 0.0).unwrap();
    unary_f32(d, UnaryOp::Gelu, p(), p(), &st, &shape).unwrap();
    binary_f32(d, BinaryOp::Add, p(), p(), &st, p(), &bc, &shape).unwrap();
    reduce_rows_f32(d, ReduceOp::Sum, p(), p(), 9, 100, 1.0, false).unwrap();
    reduce_chunks_f32(d, ReduceOp::Max, p(), p(), 2, 100, 33, 16, 1.0, false).unwrap();
    softmax_rows_f32(d, p(), p(), 10, 77, false).unwrap();
    softmax_bwd_rows_f32(d, p(), p(), p(), 10, 77, true).unwrap();
    layer_norm_fwd_f32(d, p(), Some(p()), p(), Some(p()), None, 10, 64, 1e-5).unwrap();
    layer_norm_bwd_dx_f32(d, p(), p(), p(), p(), None, 10, 64).unwrap();
    let grads = LayerNormParamGrads {
        dweight: Some(p()),
        dbias: Some(p()),
    };
    layer_norm_bwd_params_f32(d, grads, p(), p(), p(), 100, 64, 32).unwrap();
    gemm_f32(d, &f32_gemm(p(), p(), p())).unwrap();
    let (aux, aux_rs) = (p(), 70);
    gemm_f32_epilogue(
        d,
        &f32_gemm(p(), p(), p()),
        GemmEpilogue::Gelu { aux, aux_rs },
    )
    .unwrap();
    let residual = GemmEpilogue::Residual { aux, aux_rs };
    gemm_f32_epilogue(d, &f32_gemm(p(), p(), p()), residual).unwrap();
    let gelu_grad = GemmEpilogue::GeluGrad { aux, aux_rs };
    gemm_f32_epilogue(d, &f32_gemm(p(), p(), p()), gelu_grad).unwrap();
    let tokens = |strides| Tokens { ptr: p(), strides };
    let (x, a) = (tokens([-60, 6, 1]), tokens([120, 12, 1]));
    let shape = CouplingShape {
        dims: [3, 10, 6],
        clip: Some(4.0),
    };
    coupling_fwd_f32(d, p(), x, a, a, shape).unwrap();
    let grads = CouplingGrads {
        dx: Some(p()),
        dalpha: None,
        dmu: Some(p()),
    };
    coupling_bwd_f32(d, grads, p(), x, a, a, shape).unwrap();
    let dims = [3, 10, 6];
    let inv = [x, a, a, tokens([-60, 6, 1]), Tokens::contiguous(p(), dims)];
    coupling_inverse_f32(
        d,
        inv[4],
        inv[0],
        inv[1],
        inv[2],
        Some((inv[3], a, 0.5)),
        dims,
    )
    .unwrap();
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        let g = bf16_gemm(layout, p(), p(), p());
        for tile in [Bf16Tile::Small, Bf16Tile::Large] {
            gemm_bf16_on(d, &g, None, tile).unwrap();
        }
        for tile in [WgmmaTile::N128, WgmmaTile::N256] {
            gemm_bf16_wgmma(d, &g, None, tile).unwrap();
        }
        gemm_bf16_tma(d, &g, None).unwrap();
    }
    for layout in [Bf16Layout::NN, Bf16Layout::NT] {
        for epi in [
            GemmEpilogue::Gelu { aux, aux_rs: 72 },
            GemmEpilogue::Residual { aux, aux_rs: 72 },
            GemmEpilogue::GeluGrad { aux, aux_rs: 72 },
        ] {
            let g = GemmBf16 {
                beta: 0.0,
                ..bf16_gemm(layout, p(), p(), p())
            };
            for tile in [Bf16Tile::Small, Bf16Tile::Large] {
                gemm_bf16_on(d, &g, Some(epi), tile).unwrap();
            }
            gemm_bf16_wgmma(d, &g, Some(epi), WgmmaTile::N256).unwrap();
            gemm_bf16_tma(d, &g, Some(epi)).unwrap();
        }
    }
    index_select_f32(d, p(), p(), p(), 2, 10, 4, 8).unwrap();
    index_add_f32(d, p(), p(), p(), p(), 2, 10, 4, 8).unwrap();
    let split = GemmBf16 {
        k: 48,
        ..bf16_gemm(Bf16Layout::TN, p(), p(), p())
    };
    gemm_bf16_split_k(d, &split, Bf16Tile::Large, 2).unwrap();
    peak_mma_bf16(d, p(), 0x3f80_3f80, 0x3b80_3b80, 4, 16).unwrap();
    peak_copy_b128(d, p(), p(), 1000).unwrap();
    let c = AdamWCoeffs::new(&AdamWConfig::default(), 1e-3, 1).unwrap();
    adamw_f32(d, p(), p(), p(), p(), 1000, &c).unwrap();
    ema_f32(d, p(), p(), 1000, 0.999).unwrap();
    sum_squares_partial_f32(d, p(), p(), 1000, 256).unwrap();
    sum_f64(d, p(), p(), 4).unwrap();
    let view = |p: DevicePtr| AttnView {
        ptr: p,
        strides: [3 * 70 * 64, 64, 3 * 64, 1],
    };
    let dims = AttnDims {
        b: 2,
        h: 3,
        nq: 50,
        nk: 70,
        dh: 64,
        dv: 64,
    };
    let scores = AttnScores {
        alpha: 0.125,
        causal: true,
    };
    let (q, k, v, o) = (view(p()), view(p()), view(p()), view(p()));
    attn_fwd(
        d,
        &AttnFwd {
            dims,
            scores,
            q,
            k,
            v,
            o,
            lse: p(),
            precision: AttnPrecision::F32,
        },
    )
    .unwrap();
    for dh in [64, 128] {
        let dims = AttnDims { dh, dv: dh, ..dims };
        let fwd = AttnFwd {
            dims,
            scores,
            q,
            k,
            v,
            o,
            lse: p(),
            precision: AttnPrecision::Bf16,
        };
        attn_fwd(d, &fwd).unwrap();
        let fwd = AttnFwd {
            precision: AttnPrecision::Bf16Inputs,
            ..fwd
        };
        attn_fwd_saving_bf16(d, &fwd, p()).unwrap();
        if fwd.dims.dh == 64 {
            attn_fwd_wgmma(d, &fwd, Some(p())).unwrap();
            attn_fwd_tma(d, &fwd, Some(p())).unwrap();
        }
    }
    let bwd = AttnBwd {
        dims,
        scores,
        q,
        k,
        v,
        o,
        g: view(p()),
        lse: p(),
        delta: p(),
        dq: view(p()),
        dk: view(p()),
        dv: view(p()),
    };
    attn_bwd(d, &bwd).unwrap();
    attn_bwd_stored(d, &bwd, AttnStorage::Bf16).unwrap();
    let dims64 = AttnDims {
        dh: 64,
        dv: 64,
        ..dims
    };
    let tensor_cores = AttnBwd {
        dims: dims64,
        ..bwd
    };
    attn_bwd_stored(d, &tensor_cores, AttnStorage::Bf16TensorCores).unwrap();
    attn_bwd_wgmma(d, &tensor_cores).unwrap();
    attn_bwd_tma(d, &tensor_cores).unwrap();
    let dec = AttnDecode {
        dims: AttnDims { nq: 1, ..dims },
        alpha: 0.125,
        q,
        k,
        v,
        o,
        lse: p(),
        scratch: p(),
        append: None,
    };
    attn_decode_with(d, &dec, DecodeLaunch::Split).unwrap();
    attn_decode_with(d, &dec, DecodeLaunch::Fused).unwrap();
    let dec = AttnDecode {
        append: Some(DecodeAppend { k: q, v: q }),
        ..dec
    };
    attn_decode_with(d, &dec, DecodeLaunch::Split).unwrap();
    attn_decode_with(d, &dec, DecodeLaunch::Fused).unwrap();
    d.take()
}

fn f32_gemm(c: DevicePtr, a: DevicePtr, b: DevicePtr) -> GemmF32 {
    GemmF32 {
        m: 100,
        n: 70,
        k: 33,
        batch: 2,
        c,
        c_rs: 70,
        c_bs: 7000,
        a,
        a_rs: 1,
        a_cs: 100,
        a_bs: 3300,
        b,
        b_rs: 70,
        b_cs: 1,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    }
}

fn bf16_gemm(layout: Bf16Layout, c: DevicePtr, a: DevicePtr, b: DevicePtr) -> GemmBf16 {
    GemmBf16 {
        layout,
        m: 100,
        n: 72,
        k: 40,
        batch: 1,
        c,
        ldc: 72,
        c_bs: 0,
        a,
        lda: 104,
        a_bs: 0,
        b,
        ldb: 80,
        b_bs: 0,
        bias: Some(c),
        alpha: 1.0,
        beta: 1.0,
    }
}

#[test]
fn ptx_entries_are_parsed() {
    // The parser itself: a known signature from the committed gemm module.
    let e = entries(GEMM.ptx);
    let sig = &e["gemm_f32"];
    assert_eq!(sig.len(), 18);
    assert_eq!(sig[0], ".u64");
    assert_eq!(sig[4], ".u32");
    assert_eq!(sig[15], ".f32");
}

#[test]
fn every_wrapper_packs_its_kernels_parameters_and_every_kernel_has_a_wrapper() {
    let d = Recorder::default();
    let launched: BTreeSet<String> = launch_every_wrapper(&d)
        .iter()
        .map(check_signature)
        .collect();
    let declared: BTreeSet<String> = MODULES
        .iter()
        .flat_map(|m| {
            entries(m.ptx)
                .into_keys()
                .map(move |k| format!("{}/{k}", m.name))
        })
        .collect();
    assert!(!declared.is_empty());
    assert_eq!(
        launched, declared,
        "kernels without a wrapper, or wrappers without a kernel"
    );
}

/// `NAME = value` pairs of the C enum `name` in a .cu source.
fn c_enum(source: &str, name: &str) -> BTreeMap<String, u32> {
    let start = source
        .find(&format!("enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name}"));
    let body = &source[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
    body.lines()
        .map(|l| l.split("//").next().unwrap().trim().trim_end_matches(','))
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: no value in {l:?}"));
            (k.trim().to_string(), v.trim().parse().unwrap())
        })
        .collect()
}

/// `GeluTanh` -> `GELU_TANH`.
fn upper_snake(camel: &str) -> String {
    let mut s = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_uppercase());
    }
    s
}

/// `PREFIX_VARIANT -> code` for every listed value; a variant's name is its `Debug` text up
/// to its fields (`PowScalar(2.5)` -> `POW_SCALAR`).
fn rust_codes<T: std::fmt::Debug + Copy>(
    prefix: &str,
    all: &[T],
    code: impl Fn(T) -> u32,
) -> BTreeMap<String, u32> {
    all.iter()
        .map(|&v| {
            let debug = format!("{v:?}");
            let name = debug.split(['(', ' ']).next().unwrap_or(&debug);
            (format!("{prefix}{}", upper_snake(name)), code(v))
        })
        .collect()
}

const ELEMENTWISE_CU: &str = include_str!("../../../ptx/elementwise.cu");
const REDUCE_CU: &str = include_str!("../../../ptx/reduce.cu");
const NORM_CU: &str = include_str!("../../../ptx/norm.cu");
// The GEMM flags live in the header both GEMM modules include.
const GEMM_EPILOGUE_CUH: &str = include_str!("../../../ptx/gemm_epilogue.cuh");

#[test]
fn op_codes_match_the_cuda_sources() {
    assert_eq!(
        rust_codes("UNARY_", &UnaryOp::EVERY, UnaryOp::code),
        c_enum(ELEMENTWISE_CU, "UnaryOp")
    );
    assert_eq!(
        rust_codes("BINARY_", &BinaryOp::EVERY, BinaryOp::code),
        c_enum(ELEMENTWISE_CU, "BinaryOp")
    );
    assert_eq!(
        rust_codes("REDUCE_", &ReduceOp::ALL, |o| o as u32),
        c_enum(REDUCE_CU, "ReduceOp")
    );
    let ln: BTreeMap<String, u32> = [
        ("LN_HAS_WEIGHT", norm::LN_HAS_WEIGHT),
        ("LN_HAS_BIAS", norm::LN_HAS_BIAS),
        ("LN_SAVE_STATS", norm::LN_SAVE_STATS),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(ln, c_enum(NORM_CU, "LayerNormFlags"));
    let g: BTreeMap<String, u32> = [("GEMM_HAS_BIAS".to_string(), gemm::GEMM_HAS_BIAS)].into();
    assert_eq!(g, c_enum(GEMM_EPILOGUE_CUH, "GemmFlags"));
}

#[test]
fn the_enum_parser_reads_values_and_the_all_lists_are_in_code_order() {
    let e = c_enum("enum E {\n  A = 0,  // first\n  B_C = 7,\n};", "E");
    assert_eq!(
        e,
        BTreeMap::from([("A".to_string(), 0), ("B_C".to_string(), 7)])
    );
}

#[test]
fn launch_configurations_follow_the_kernels_contracts() {
    let d = Recorder::default();
    unary_f32(&d, UnaryOp::Exp, d.ptr(), d.ptr(), &[1], &[1000]).unwrap();
    assert_eq!(d.one().config, LaunchConfig::linear(4, 256));
    // Beyond 65535 CTAs the grid-stride loop takes over.
    unary_f32(&d, UnaryOp::Exp, d.ptr(), d.ptr(), &[1], &[100_000_000]).unwrap();
    assert_eq!(d.one().config, LaunchConfig::linear(65_535, 256));
    // Warp-per-row kernels: 8 rows per CTA.
    softmax_rows_f32(&d, d.ptr(), d.ptr(), 17, 5, false).unwrap();
    assert_eq!(d.one().config, LaunchConfig::linear(3, 256));
    reduce_chunks_f32(
        &d,
        ReduceOp::Sum,
        d.ptr(),
        d.ptr(),
        3,
        1000,
        300,
        64,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(d.one().config.grid, (2, 16, 3));
    // An empty reduced axis still writes the identity: one chunk.
    reduce_chunks_f32(
        &d,
        ReduceOp::Max,
        d.ptr(),
        d.ptr(),
        3,
        0,
        300,
        64,
        1.0,
        false,
    )
    .unwrap();
    assert_eq!(d.one().config.grid, (2, 1, 3));
    gemm_f32(&d, &f32_gemm(d.ptr(), d.ptr(), d.ptr())).unwrap();
    let l = d.one();
    assert_eq!((l.config.grid, l.config.block), ((2, 2, 2), (256, 1, 1)));
    gemm_bf16(&d, &bf16_gemm(Bf16Layout::NT, d.ptr(), d.ptr(), d.ptr())).unwrap();
    let l = d.one();
    assert_eq!(
        (l.kernel.as_str(), l.config.grid, l.config.block),
        ("gemm_bf16_nt", (2, 2, 1), (128, 1, 1))
    );
    assert_eq!(l.config.shared_bytes, 20_480);
    // A product that gives every multiprocessor of a large card a 128 x 128 tile takes it.
    let big = GemmBf16 {
        m: 4096,
        n: 4096,
        ldc: 4096,
        ..bf16_gemm(Bf16Layout::NT, d.ptr(), d.ptr(), d.ptr())
    };
    gemm_bf16(&d, &big).unwrap();
    let l = d.one();
    assert_eq!(
        (l.kernel.as_str(), l.config.grid, l.config.shared_bytes),
        ("gemm_bf16_nt_128", (32, 32, 1), 81_920)
    );
    // The ImageNet64 weight gradient (768 x 768 outputs): 36 large tiles, so the small.
    let wgrad = GemmBf16 {
        m: 768,
        n: 768,
        ..big
    };
    gemm_bf16(&d, &wgrad).unwrap();
    assert_eq!(d.one().kernel, "gemm_bf16_nt");
    assert_eq!(
        Bf16Tile::pick(128 * 12, 128 * 11, 1),
        Bf16Tile::Large,
        "{LARGE_TILE_MIN_CTAS} CTAs"
    );
    assert_eq!(Bf16Tile::pick(128 * 12, 128 * 10, 1), Bf16Tile::Small);
    // Its weight gradient g^T x over 16 images of 1,024 tokens splits k four ways on the
    // 128 tile: 144 CTAs, then the in-order sum of the four partial products.
    let wgrad_tn = GemmBf16 {
        layout: Bf16Layout::TN,
        m: 768,
        n: 768,
        k: 16_384,
        lda: 768,
        ldb: 768,
        ldc: 768,
        ..bf16_gemm(Bf16Layout::TN, d.ptr(), d.ptr(), d.ptr())
    };
    assert_eq!(split_k_plan(&wgrad_tn), 4);
    // On the TMA tile's 128 x 256 CTAs, eight ways: 144 CTAs again.
    assert_eq!(split_k_plan_tma(&wgrad_tn), 8);
    assert_eq!(
        split_k_plan_tma(&GemmBf16 {
            k: 1000,
            ..wgrad_tn
        }),
        1
    );
    gemm_bf16(&d, &wgrad_tn).unwrap();
    let l = d.take();
    assert_eq!(
        l.iter()
            .map(|l| (l.kernel.as_str(), l.config.grid))
            .collect::<Vec<_>>(),
        [
            ("gemm_bf16_tn_128", (6, 6, 4)),
            ("gemm_splitk_reduce", (2304, 1, 1))
        ]
    );
    // qkv's [2304, 768] splits in two; fc1's 144 tiles and a short k do not split.
    assert_eq!(
        split_k_plan(&GemmBf16 {
            m: 2304,
            ..wgrad_tn
        }),
        2
    );
    assert_eq!(
        split_k_plan(&GemmBf16 {
            m: 3072,
            ..wgrad_tn
        }),
        1
    );
    assert_eq!(
        split_k_plan(&GemmBf16 {
            k: 1000,
            ..wgrad_tn
        }),
        1
    );
    assert_eq!(
        split_k_plan(&GemmBf16 {
            batch: 2,
            ..wgrad_tn
        }),
        1
    );
    // At most SPLIT_MAX, and never under SPLIT_MIN_K per split.
    let tiny = GemmBf16 {
        m: 64,
        n: 64,
        ..wgrad_tn
    };
    assert_eq!(split_k_plan(&tiny), SPLIT_MAX);
    assert_eq!(
        split_k_plan(&GemmBf16 {
            k: 4 * SPLIT_MIN_K,
            ..tiny
        }),
        4
    );
    assert!(gemm_bf16_split_k(&d, &GemmBf16 { k: 100, ..tiny }, Bf16Tile::Large, 4).is_err());
    sum_squares_partial_f32(&d, d.ptr(), d.ptr(), 1000, 256).unwrap();
    assert_eq!(d.one().config, LaunchConfig::linear(4, 256));
}

#[test]
fn views_are_packed_outermost_first_with_unused_slots_zero() {
    let d = Recorder::default();
    let (dst, src) = (d.ptr(), d.ptr());
    strided_copy_f32(&d, dst, &[6, 1], src, &[-1, 2], &[2, 6]).unwrap();
    let a = d.one().args;
    let u = |v: u32| KernelArg::U32(v);
    let mut want = vec![
        KernelArg::Ptr(dst),
        KernelArg::Ptr(src),
        u(12),
        u(2),
        u(2),
        u(6),
    ];
    want.extend([u(0); 6]);
    want.extend([u(6), u(1)]);
    want.extend([u(0); 6]);
    want.extend([u(-1i32 as u32), u(2)]);
    want.extend([u(0); 6]);
    assert_eq!(a, want);
}

#[test]
fn empty_work_launches_nothing() {
    let d = Recorder::default();
    unary_f32(&d, UnaryOp::Exp, d.ptr(), d.ptr(), &[3, 1], &[0, 3]).unwrap();
    fill_f32(&d, d.ptr(), 0, 1.0).unwrap();
    softmax_rows_f32(&d, d.ptr(), d.ptr(), 0, 5, false).unwrap();
    let mut g = f32_gemm(d.ptr(), d.ptr(), d.ptr());
    g.m = 0;
    gemm_f32(&d, &g).unwrap();
    index_add_f32(&d, d.ptr(), d.ptr(), d.ptr(), d.ptr(), 2, 10, 0, 8).unwrap();
    assert!(d.take().is_empty());
}

fn message(e: crate::Error) -> String {
    e.to_string()
}

#[test]
fn bad_sizes_are_errors_that_name_the_op() {
    let d = Recorder::default();
    let p = d.ptr();
    let cases: Vec<(&str, Result<()>)> = vec![
        (
            "unary_f32",
            unary_f32(&d, UnaryOp::Neg, p, p, &[1; 9], &[1; 9]),
        ),
        (
            "unary_f32",
            unary_f32(&d, UnaryOp::Neg, p, p, &[1], &[2, 3]),
        ),
        (
            "unary_f32",
            unary_f32(&d, UnaryOp::Neg, p, p, &[1 << 40], &[2]),
        ),
        (
            "binary_f32",
            binary_f32(
                &d,
                BinaryOp::Add,
                p,
                p,
                &[1, 1],
                p,
                &[0, 0],
                &[1 << 16, 1 << 16],
            ),
        ),
        ("fill_f32", fill_f32(&d, p, usize::MAX, 0.0)),
        (
            "reduce_chunks_f32",
            reduce_chunks_f32(&d, ReduceOp::Sum, p, p, 1, 10, 1, 0, 1.0, false),
        ),
        (
            "reduce_chunks_f32",
            reduce_chunks_f32(&d, ReduceOp::Sum, p, p, 70_000, 10, 1, 10, 1.0, false),
        ),
        (
            "layer_norm_fwd_f32",
            layer_norm_fwd_f32(&d, p, None, p, None, None, 4, 4, f32::NAN),
        ),
        (
            "layer_norm_bwd_params_f32",
            layer_norm_bwd_params_f32(
                &d,
                LayerNormParamGrads {
                    dweight: Some(p),
                    dbias: None,
                },
                p,
                p,
                p,
                4,
                4,
                0,
            ),
        ),
        (
            "sum_squares_partial_f32",
            sum_squares_partial_f32(&d, p, p, 10, 0),
        ),
        ("ema_f32", ema_f32(&d, p, p, 10, 1.5)),
    ];
    for (op, r) in cases {
        let e = r.expect_err(op);
        assert!(message(e).contains(op), "error for {op} does not name it");
    }
    assert!(d.take().is_empty(), "a rejected call launched");
}

#[test]
fn gemm_arguments_are_checked() {
    let d = Recorder::default();
    let (c, a, b) = (d.ptr(), d.ptr(), d.ptr());
    let ok = bf16_gemm(Bf16Layout::NT, c, a, b);
    let bad = [
        GemmBf16 { lda: 44, ..ok }, // not a multiple of 8
        GemmBf16 { lda: 32, ..ok }, // shorter than k = 40
        GemmBf16 { ldb: 36, ..ok }, // B: not a multiple of 8
        GemmBf16 {
            a: a.offset(2),
            ..ok
        }, // misaligned
        GemmBf16 { b_bs: 4, ..ok }, // batch stride not a multiple of 8
        GemmBf16 { ldc: 50, ..ok }, // C rows overlap (n = 72)
        GemmBf16 {
            batch: 70_000,
            ..ok
        }, // grid z too large
        GemmBf16 {
            alpha: f32::INFINITY,
            ..ok
        }, // non-finite scale
        GemmBf16 {
            layout: Bf16Layout::TN,
            lda: 96,
            ..ok
        }, // TN: lda must cover m = 100
    ];
    for g in bad {
        assert!(gemm_bf16(&d, &g).is_err(), "accepted {g:?}");
    }
    let f = f32_gemm(c, a, b);
    assert!(gemm_f32(&d, &GemmF32 { c_rs: 10, ..f }).is_err());
    assert!(gemm_f32(&d, &GemmF32 { k: 1 << 31, ..f }).is_err());
    assert!(gemm_f32(
        &d,
        &GemmF32 {
            m: 65_536 * 64 + 1,
            ..f
        }
    )
    .is_err());
    assert!(d.take().is_empty());
}

#[test]
fn scatter_plan_groups_sources_by_destination_in_increasing_position() {
    let idx = [3usize, 0, 3, 1, 3, 0];
    let plan = scatter_plan(&idx, 5).unwrap();
    assert_eq!(plan.starts, vec![0, 2, 3, 3, 6, 6]);
    // Against the definition: for each destination, the positions holding it, in order.
    for j in 0..5 {
        let want: Vec<u32> = (0..idx.len())
            .filter(|&i| idx[i] == j)
            .map(|i| i as u32)
            .collect();
        let (s, e) = (plan.starts[j] as usize, plan.starts[j + 1] as usize);
        assert_eq!(plan.order[s..e], want[..], "destination {j}");
    }
    let e = scatter_plan(&[0, 5], 5).unwrap_err().to_string();
    assert!(e.contains("index 5") && e.contains("position 1"), "{e}");
    assert_eq!(u32_indices("t", &[4, 0], 5).unwrap(), vec![4, 0]);
}

#[test]
fn adamw_coefficients_reproduce_the_cpu_update_bit_for_bit() {
    use crate::nn::ParamStore;
    use crate::optim::AdamW;
    use crate::Tensor;
    // The kernel's expression, operation for operation (ptx/optim.cu, adamw_f32), in f32.
    fn kernel(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &AdamWCoeffs) {
        for i in 0..p.len() {
            let pi = p[i] * c.decay;
            m[i] = c.b1 * m[i] + c.one_minus_b1 * g[i];
            v[i] = c.b2 * v[i] + c.one_minus_b2 * g[i] * g[i];
            let denom = v[i].sqrt() * c.inv_bc2_sqrt + c.eps;
            p[i] = pi - c.step_size * m[i] / denom;
        }
    }
    let cfg = AdamWConfig {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let init: Vec<f32> = (0..37)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let w = Tensor::from_vec(init.clone(), &[37])
        .unwrap()
        .requires_grad_();
    let mut store = ParamStore::new();
    store
        .insert("", vec![("w".to_string(), w.clone())])
        .unwrap();
    let mut opt = AdamW::new(&store, cfg).unwrap();
    let (mut p, mut m, mut v) = (init, vec![0.0f32; 37], vec![0.0f32; 37]);
    for step in 1..=5u64 {
        let g: Vec<f32> = (0..37)
            .map(|i| (((i + 3) * step as usize * 131) % 97) as f32 / 40.0 - 1.2)
            .collect();
        w.set_grad(Some(Tensor::from_vec(g.clone(), &[37]).unwrap()));
        let lr = cfg.lr * (1.0 - step as f64 / 10.0);
        opt.step(lr).unwrap();
        kernel(
            &mut p,
            &mut m,
            &mut v,
            &g,
            &AdamWCoeffs::new(&cfg, lr, step).unwrap(),
        );
        let cpu = w.to_vec();
        for (i, (a, b)) in cpu.iter().zip(&p).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "step {step}, element {i}: cpu {a} kernel {b}"
            );
        }
    }
    assert!(AdamWCoeffs::new(&cfg, 1e-3, 0).is_err());
    assert!(AdamWCoeffs::new(&cfg, f64::NAN, 1).is_err());
}

/// Offsets of every element of a view in row-major order, one list per operand.
fn offsets(shape: &[usize], strides: &[&[isize]]) -> Vec<Vec<isize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut i| {
            let mut o = vec![0isize; strides.len()];
            for d in (0..shape.len()).rev() {
                let c = (i % shape[d]) as isize;
                i /= shape[d];
                for (k, st) in strides.iter().enumerate() {
                    o[k] += c * st[d];
                }
            }
            o
        })
        .collect()
}

#[test]
fn merge_dims_visits_the_same_offsets_in_the_same_order() {
    let shapes: [&[usize]; 6] = [
        &[2, 3, 4],
        &[1, 5, 1, 6],
        &[4, 1, 3, 2, 5],
        &[7],
        &[],
        &[3, 0, 2],
    ];
    let mut seed = 12345u64;
    let mut rnd = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    let mut merged_something = false;
    for shape in shapes {
        for _ in 0..20 {
            // Contiguous, broadcast (0), reversed, and permuted-contiguous strides, mixed.
            let contiguous: Vec<isize> = (0..shape.len())
                .map(|d| shape[d + 1..].iter().product::<usize>() as isize)
                .collect();
            let mut a = contiguous.clone();
            let mut b = contiguous.clone();
            for d in 0..shape.len() {
                match rnd(4) {
                    0 => a[d] = 0,
                    1 => a[d] = -a[d],
                    2 => b[d] *= 3,
                    _ => {}
                }
            }
            let (ms, mst) = merge_dims(shape, &[&a, &b]);
            assert!(ms.len() <= shape.len().max(1));
            merged_something |= ms.len() < shape.iter().filter(|&&s| s != 1).count();
            let want = offsets(shape, &[&a, &b]);
            let got = offsets(&ms, &[&mst[0], &mst[1]]);
            assert_eq!(
                got, want,
                "shape {shape:?} strides {a:?} {b:?} -> {ms:?} {mst:?}"
            );
        }
    }
    assert!(merged_something, "no case merged any dimension");
    assert_eq!(
        merge_dims(&[4, 5, 6], &[&[30, 6, 1]]),
        (vec![120], vec![vec![1]])
    );
}

#[test]
fn reduce_axis_picks_one_or_two_fixed_passes() {
    let d = Recorder::default();
    let (out, x, s) = (d.ptr(), d.ptr(), d.ptr());
    // inner == 1: one warp per row.
    reduce_axis_f32(&d, ReduceOp::Sum, true, out, x, None, 6, 1000, 1, false).unwrap();
    let l = d.one();
    assert_eq!(l.kernel, "reduce_rows_f32");
    assert_eq!(l.args[5], KernelArg::F32(1.0 / 1000.0));
    // Short axis: one chunked pass covering it.
    reduce_axis_f32(&d, ReduceOp::Max, false, out, x, None, 2, 100, 64, true).unwrap();
    let l = d.one();
    assert_eq!(
        (l.kernel.as_str(), l.config.grid),
        ("reduce_chunks_f32", (1, 1, 2))
    );
    // Long axis: partials of REDUCE_CHUNK rows into scratch, then the chunks in order.
    assert_eq!(reduce_scratch_len(2, 1000, 64), 2 * 4 * 64);
    reduce_axis_f32(&d, ReduceOp::Sum, false, out, x, Some(s), 2, 1000, 64, true).unwrap();
    let l = d.take();
    assert_eq!(l.len(), 2);
    assert_eq!(
        (l[0].args[0], l[0].config.grid),
        (KernelArg::Ptr(s), (1, 4, 2))
    );
    assert_eq!(
        l[0].args[8],
        KernelArg::U32(0),
        "the first pass must not accumulate"
    );
    assert_eq!(
        (l[1].args[0], l[1].args[1]),
        (KernelArg::Ptr(out), KernelArg::Ptr(s))
    );
    assert_eq!(
        (l[1].args[3], l[1].args[8]),
        (KernelArg::U32(4), KernelArg::U32(1))
    );
    // Errors: no scratch for a long axis, a mean of a max.
    assert!(reduce_axis_f32(&d, ReduceOp::Sum, false, out, x, None, 2, 1000, 64, false).is_err());
    assert!(reduce_axis_f32(&d, ReduceOp::Max, true, out, x, None, 2, 10, 1, false).is_err());
    assert!(d.take().is_empty());
}

/// What `gemm_bf16` and `gemm_bf16_epilogue` launch for each `TARFLOW_WGMMA` choice: the
/// `mma.sync` tiles when off; the warpgroup tile `WgmmaTile::pick` names (split products on
/// the 128 one) with `1`; with `tma`, the TMA tile for the products the 256 tile would take
/// (every layout) and for split products (planned for its tile), and the same as `1` for
/// the others.
#[test]
fn the_hopper_choice_routes_each_product_to_its_tile() {
    use super::gemm::{gemm_bf16_epilogue_with, gemm_bf16_with, HopperTiles};
    let d = Recorder::default();
    let sized = |layout, m: usize, n: usize, k: usize| GemmBf16 {
        m,
        n,
        k,
        ldc: n,
        lda: if layout == Bf16Layout::NT || layout == Bf16Layout::NN {
            k
        } else {
            m
        },
        ldb: if layout == Bf16Layout::NT || layout == Bf16Layout::TT {
            k
        } else {
            n
        },
        ..bf16_gemm(layout, d.ptr(), d.ptr(), d.ptr())
    };
    // 132 tiles of 128 x 256; 132 of 128 x 128 only; a weight gradient that splits; small.
    let nt_large = sized(Bf16Layout::NT, 1536, 2816, 64);
    let nn_large = sized(Bf16Layout::NN, 1536, 2816, 64);
    let tn_large = sized(Bf16Layout::TN, 1536, 2816, 64);
    let nt_medium = sized(Bf16Layout::NT, 1536, 1408, 64);
    let tn_wgrad = sized(Bf16Layout::TN, 768, 768, 16_384);
    let small = sized(Bf16Layout::NT, 100, 72, 40);
    use HopperTiles::{Off, Tma, Wgmma};
    let table: [(&GemmBf16, [&[&str]; 3]); 6] = [
        (
            &nt_large,
            [
                &["gemm_bf16_nt_128"],
                &["gemm_bf16_nt_wgmma_256"],
                &["gemm_bf16_nt_tma_256"],
            ],
        ),
        (
            &nn_large,
            [
                &["gemm_bf16_nn_128"],
                &["gemm_bf16_nn_wgmma_256"],
                &["gemm_bf16_nn_tma_256"],
            ],
        ),
        (
            &tn_large,
            [
                &["gemm_bf16_tn_128"],
                &["gemm_bf16_tn_wgmma_256"],
                &["gemm_bf16_tn_tma_256"],
            ],
        ),
        (
            &nt_medium,
            [
                &["gemm_bf16_nt_128"],
                &["gemm_bf16_nt_wgmma_128"],
                &["gemm_bf16_nt_wgmma_128"],
            ],
        ),
        (
            &tn_wgrad,
            [
                &["gemm_bf16_tn_128", "gemm_splitk_reduce"],
                &["gemm_bf16_tn_wgmma_128", "gemm_splitk_reduce"],
                &["gemm_bf16_tn_tma_256", "gemm_splitk_reduce"],
            ],
        ),
        (
            &small,
            [&["gemm_bf16_nt"], &["gemm_bf16_nt"], &["gemm_bf16_nt"]],
        ),
    ];
    for (g, want) in table {
        for (tiles, want) in [Off, Wgmma, Tma].into_iter().zip(want) {
            gemm_bf16_with(&d, g, tiles).unwrap();
            let got: Vec<String> = d.take().into_iter().map(|l| l.kernel).collect();
            assert_eq!(
                got, want,
                "{:?} {}x{}x{} with {tiles:?}",
                g.layout, g.m, g.n, g.k
            );
        }
    }
    // The epilogue stages (beta 0) on the large products.
    let aux = d.ptr();
    let epi = GemmEpilogue::Gelu { aux, aux_rs: 2816 };
    for (g, want) in [
        (
            &nt_large,
            [
                "gemm_bf16_nt_gelu_128",
                "gemm_bf16_nt_gelu_wgmma_256",
                "gemm_bf16_nt_gelu_tma_256",
            ],
        ),
        (
            &nn_large,
            [
                "gemm_bf16_nn_gelu_128",
                "gemm_bf16_nn_gelu_wgmma_256",
                "gemm_bf16_nn_gelu_tma_256",
            ],
        ),
    ] {
        for (tiles, want) in [Off, Wgmma, Tma].into_iter().zip(want) {
            let g = GemmBf16 { beta: 0.0, ..*g };
            gemm_bf16_epilogue_with(&d, &g, epi, tiles).unwrap();
            assert_eq!(d.one().kernel, want, "{:?} with {tiles:?}", g.layout);
        }
    }
}

/// What `attn_fwd` launches for each `TARFLOW_WGMMA` choice: the bf16-input forward at head
/// dims 64 on the `mma.sync` kernel, the `wgmma` one or the TMA one; at 128 always the
/// `mma.sync` kernel.
#[test]
fn the_hopper_choice_routes_the_bf16_input_forward() {
    use super::attention::launch_fwd_with;
    use super::gemm::HopperTiles::{Off, Tma, Wgmma};
    let d = Recorder::default();
    let view = |p: DevicePtr| AttnView {
        ptr: p,
        strides: [3 * 70 * 128, 128, 3 * 128, 1],
    };
    let fwd = |dh| AttnFwd {
        dims: AttnDims {
            b: 2,
            h: 3,
            nq: 50,
            nk: 70,
            dh,
            dv: dh,
        },
        scores: AttnScores {
            alpha: 0.125,
            causal: true,
        },
        q: view(d.ptr()),
        k: view(d.ptr()),
        v: view(d.ptr()),
        o: view(d.ptr()),
        lse: d.ptr(),
        precision: AttnPrecision::Bf16Inputs,
    };
    let table = [
        (64, Off, "attn_fwd_bf16s_d64"),
        (64, Wgmma, "attn_fwd_bf16s_d64_wgmma"),
        (64, Tma, "attn_fwd_bf16s_d64_tma"),
        (128, Off, "attn_fwd_bf16s_d128"),
        (128, Wgmma, "attn_fwd_bf16s_d128"),
        (128, Tma, "attn_fwd_bf16s_d128"),
    ];
    for (dh, tiles, want) in table {
        launch_fwd_with(&d, &fwd(dh), None, tiles).unwrap();
        assert_eq!(d.one().kernel, want, "dh {dh} with {tiles:?}");
    }
}

/// What the tensor-core backward launches for each `TARFLOW_WGMMA` choice: the dot kernel,
/// then the dK/dV and dQ kernels on `mma.sync`, `wgmma` or TMA (128 keys or queries per CTA,
/// 384 threads); the other storages keep their kernels.
#[test]
fn the_hopper_choice_routes_the_tensor_core_backward() {
    use super::attention::bwd_stored;
    use super::gemm::HopperTiles::{Off, Tma, Wgmma};
    let d = Recorder::default();
    let view = |p: DevicePtr| AttnView {
        ptr: p,
        strides: [3 * 300 * 64, 64, 3 * 64, 1],
    };
    let bwd = AttnBwd {
        dims: AttnDims {
            b: 2,
            h: 3,
            nq: 200,
            nk: 300,
            dh: 64,
            dv: 64,
        },
        scores: AttnScores {
            alpha: 0.125,
            causal: true,
        },
        q: view(d.ptr()),
        k: view(d.ptr()),
        v: view(d.ptr()),
        o: view(d.ptr()),
        g: view(d.ptr()),
        lse: d.ptr(),
        delta: d.ptr(),
        dq: view(d.ptr()),
        dk: view(d.ptr()),
        dv: view(d.ptr()),
    };
    let table = [
        (
            AttnStorage::Bf16TensorCores,
            Off,
            ["attn_bwd_dkdv_bf16_d64", "attn_bwd_dq_bf16_d64"],
            [5, 4],
            128,
        ),
        (
            AttnStorage::Bf16TensorCores,
            Wgmma,
            ["attn_bwd_dkdv_bf16_d64_wgmma", "attn_bwd_dq_bf16_d64_wgmma"],
            [5, 4],
            128,
        ),
        (
            AttnStorage::Bf16TensorCores,
            Tma,
            ["attn_bwd_dkdv_bf16_d64_tma", "attn_bwd_dq_bf16_d64_tma"],
            [3, 2],
            384,
        ),
        (
            AttnStorage::Bf16,
            Tma,
            ["attn_bwd_dkdv_bf16s", "attn_bwd_dq_bf16s"],
            [19, 7],
            128,
        ),
    ];
    for (storage, tiles, [dkdv, dq], grids, threads) in table {
        bwd_stored(&d, &bwd, storage, tiles).unwrap();
        let launches = d.take();
        let names: Vec<&str> = launches.iter().map(|l| l.kernel.as_str()).collect();
        assert_eq!(names[1..], [dkdv, dq], "{storage:?} with {tiles:?}");
        for (l, grid) in launches[1..].iter().zip(grids) {
            assert_eq!(l.config.grid.0, grid, "{} with {tiles:?}", l.kernel);
            assert_eq!(l.config.block.0, threads, "{} with {tiles:?}", l.kernel);
        }
    }
    // The TMA kernels' maps: an lse that is not 16-byte aligned, or a q whose position stride
    // is 0 over 200 queries, is refused by name.
    let lse4 = AttnBwd {
        lse: DevicePtr(d.ptr().0 + 4),
        ..bwd
    };
    let e = bwd_stored(&d, &lse4, AttnStorage::Bf16TensorCores, Tma).unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("lse: ") && e.contains("is not 16-byte aligned"),
        "{e}"
    );
    let repeated = AttnBwd {
        q: AttnView {
            strides: [0, 64, 0, 1],
            ..bwd.q
        },
        ..bwd
    };
    let e = bwd_stored(&d, &repeated, AttnStorage::Bf16TensorCores, Tma).unwrap_err();
    assert!(e.to_string().contains("position stride cannot be 0"), "{e}");
}
