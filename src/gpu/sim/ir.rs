//! The decoded form of a PTX module: registers resolved to indices, labels to instruction
//! indices, symbols to addresses and every modifier to an enum, so that execution never looks
//! at text again.

use std::collections::HashMap;

/// A PTX fundamental type as it appears in an instruction suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    /// `.pred`
    Pred,
    /// `.b8`
    B8,
    /// `.b16`
    B16,
    /// `.b32`
    B32,
    /// `.b64`
    B64,
    /// `.u8`
    U8,
    /// `.u16`
    U16,
    /// `.u32`
    U32,
    /// `.u64`
    U64,
    /// `.s8`
    S8,
    /// `.s16`
    S16,
    /// `.s32`
    S32,
    /// `.s64`
    S64,
    /// `.f16`
    F16,
    /// `.f16x2`
    F16x2,
    /// `.bf16`
    Bf16,
    /// `.bf16x2`
    Bf16x2,
    /// `.f32`
    F32,
    /// `.f64`
    F64,
}

impl Ty {
    /// Parses a suffix without its dot (`"u32"`).
    pub fn from_name(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    /// Width in bits (a predicate counts as 1).
    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
        }
    }

    /// Width in bytes of one element in memory.
    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    /// Whether the type is a signed integer.
    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64
        )
    }
}

/// A state space of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// No space given: the address is generic and decides.
    Generic,
    /// `.global`
    Global,
    /// `.shared` (or `.shared::cta`)
    Shared,
    /// `.param` (kernel parameters)
    Param,
    /// `.const`
    Const,
    /// `.local` (per-thread memory, e.g. nvcc's `__local_depot` arrays)
    Local,
}

/// A floating-point or integer rounding modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    /// `.rn` / `.rni`: to nearest, ties to even.
    Nearest,
    /// `.rz` / `.rzi`: toward zero.
    Zero,
    /// `.rm` / `.rmi`: toward minus infinity.
    Down,
    /// `.rp` / `.rpi`: toward plus infinity.
    Up,
}

/// Special registers readable with `mov`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    /// `%tid.{x,y,z}`
    Tid(u8),
    /// `%ntid.{x,y,z}`
    Ntid(u8),
    /// `%ctaid.{x,y,z}`
    Ctaid(u8),
    /// `%nctaid.{x,y,z}`
    Nctaid(u8),
    /// `%laneid`
    Laneid,
    /// `%warpid`
    Warpid,
    /// `%nwarpid`
    Nwarpid,
    /// `WARP_SZ` (the parser folds it to the constant 32).
    WarpSize,
}

/// An instruction operand, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A register by index into the kernel's register file.
    Reg(u32),
    /// A predicate register read negated (`!%p1`).
    NotReg(u32),
    /// An immediate, as raw bits (floats already converted to their bit pattern; symbols to
    /// their address in their own space).
    Imm(u64),
    /// A special register.
    Sreg(Sreg),
    /// A brace-enclosed vector of operands (`{%r1, %r2}`); `_` sinks are `None`. A bare `_`
    /// operand is a vector of one sink.
    Vec(Vec<Option<u32>>),
    /// A memory address `[base + disp]`; `base` is a register or absent (a symbol or an
    /// absolute address folded into `disp`).
    Addr {
        /// Register holding the base address, if any.
        base: Option<u32>,
        /// Constant displacement in bytes (symbol address included).
        disp: i64,
    },
    /// A branch target (instruction index).
    Label(u32),
}

/// Comparison of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `lt`
    Lt,
    /// `le`
    Le,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lo` (unsigned <)
    Lo,
    /// `ls` (unsigned <=)
    Ls,
    /// `hi` (unsigned >)
    Hi,
    /// `hs` (unsigned >=)
    Hs,
    /// `equ`
    Equ,
    /// `neu`
    Neu,
    /// `ltu`
    Ltu,
    /// `leu`
    Leu,
    /// `gtu`
    Gtu,
    /// `geu`
    Geu,
    /// `num`: both operands are numbers.
    Num,
    /// `nan`: either operand is NaN.
    Nan,
}

/// A boolean combination of `setp` (and of predicate logic ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoolOp {
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
}

/// Which product bits `mul`/`mad` keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulMode {
    /// `.lo`: the low half (the same width as the operands).
    Lo,
    /// `.hi`: the high half.
    Hi,
    /// `.wide`: the full product, twice the width.
    Wide,
}

/// Modifiers of a floating-point arithmetic instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FMod {
    /// `.f32` or `.f64`.
    pub ty: Ty,
    /// Rounding (`.rn` when none is given).
    pub rnd: Rnd,
    /// `.ftz`: subnormal inputs and results are flushed to sign-preserving zero (f32 only).
    pub ftz: bool,
    /// `.sat`: the result is clamped to [0, 1], NaN becoming 0.
    pub sat: bool,
}

/// Floating-point unary operations computed through one shared path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FUnary {
    /// `rcp` (`approx` or rounded)
    Rcp,
    /// `sqrt`
    Sqrt,
    /// `rsqrt.approx`
    Rsqrt,
    /// `ex2.approx`
    Ex2,
    /// `lg2.approx`
    Lg2,
    /// `sin.approx`
    Sin,
    /// `cos.approx`
    Cos,
    /// `tanh.approx`
    Tanh,
    /// `neg`
    Neg,
    /// `abs`
    Abs,
}

/// Integer binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IBin {
    /// `add`
    Add,
    /// `sub`
    Sub,
    /// `div` (signed or unsigned by type)
    Div,
    /// `rem`
    Rem,
    /// `min`
    Min,
    /// `max`
    Max,
    /// `and`
    And,
    /// `or`
    Or,
    /// `xor`
    Xor,
    /// `shl`
    Shl,
    /// `shr` (arithmetic for signed types)
    Shr,
}

/// Integer unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IUnary {
    /// `not`
    Not,
    /// `neg`
    Neg,
    /// `abs`
    Abs,
    /// `popc`
    Popc,
    /// `clz`
    Clz,
    /// `brev`
    Brev,
}

/// Operations of `atom` / `red`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    /// `.add`
    Add,
    /// `.min`
    Min,
    /// `.max`
    Max,
    /// `.and`
    And,
    /// `.or`
    Or,
    /// `.xor`
    Xor,
    /// `.exch`
    Exch,
    /// `.cas`
    Cas,
    /// `.inc` (wrapping at the operand)
    Inc,
    /// `.dec`
    Dec,
}

/// The mode of `shfl.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    /// `.up`
    Up,
    /// `.down`
    Down,
    /// `.bfly`
    Bfly,
    /// `.idx`
    Idx,
}

/// The mode of `vote.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteMode {
    /// `.all`
    All,
    /// `.any`
    Any,
    /// `.uni`
    Uni,
    /// `.ballot`
    Ballot,
}

/// A decoded opcode with its modifiers. Operands live in [`Inst::ops`], destination first.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Integer binary op: `d, a, b`.
    IBin(IBin, Ty),
    /// Integer unary op: `d, a`.
    IUnary(IUnary, Ty),
    /// `mul.{lo,hi,wide}`: `d, a, b`.
    Mul(MulMode, Ty),
    /// `mad.{lo,hi,wide}`: `d, a, b, c`.
    Mad(MulMode, Ty),
    /// Predicate logic `and/or/xor.pred`: `d, a, b`.
    PredBin(BoolOp),
    /// `not.pred d, a`.
    PredNot,
    /// `add/sub/mul` float: `d, a, b`; the u8 is 0 add, 1 sub, 2 mul.
    FArith(u8, FMod),
    /// `fma` / `mad` float: `d, a, b, c`.
    Fma(FMod),
    /// `div` float: `d, a, b`; `approx` is true for `.approx`/`.full` (computed exactly and
    /// rounded once, which is within the ISA's bound for both).
    FDiv(FMod, bool),
    /// A float unary op (`d, a`); `approx` marks the `.approx` forms.
    FUnary(FUnary, FMod, bool),
    /// `min` / `max` float (`d, a, b`); true for max.
    FMinMax(bool, FMod),
    /// `copysign d, a, b`: magnitude of `b`, sign of `a`.
    Copysign(Ty),
    /// `testp.{finite,infinite,number,notanumber,normal,subnormal} d, a` (the u8 selects).
    Testp(u8, Ty),
    /// `mov`: `d, a` (incl. vector pack/unpack).
    Mov(Ty),
    /// `bfi.ty f, a, b, pos, len`: `b` with `len` bits from `a` inserted at `pos`.
    Bfi(Ty),
    /// `bfe.ty d, a, pos, len`: bits `pos..pos+len` of `a`, sign-extended for signed types.
    Bfe(Ty),
    /// `prmt.b32 d, a, b, c` (default mode): bytes of `{b, a}` picked by `c`'s nibbles.
    Prmt,
    /// `lop3.b32 d, a, b, c, lut`: any three-input bitwise function given by its truth table.
    Lop3,
    /// `activemask.b32 d`: the lanes executing this instruction together.
    Activemask,
    /// 16-bit float arithmetic on one (`.bf16`/`.f16`) or two packed (`x2`) values, to
    /// nearest even: op 0 add, 1 sub, 2 mul, 3 fma; flags bf16 and packed.
    HArith(u8, bool, bool),
    /// `cvt`: `d, a`.
    Cvt {
        /// Destination type.
        dst: Ty,
        /// Source type.
        src: Ty,
        /// Rounding (float results) or integer rounding (`.rni` etc., float to int or
        /// float to float round-to-integer).
        rnd: Option<Rnd>,
        /// Whether the rounding was an integer rounding (`.rni`, `.rzi`, ...).
        int_rnd: bool,
        /// `.ftz`
        ftz: bool,
        /// `.sat`
        sat: bool,
    },
    /// `cvt.rn.{bf16x2,f16x2}.f32 d, a, b` (a to the upper half); true for bf16.
    CvtPack(bool, Option<Rnd>),
    /// `cvta{.to}.space.size d, a`; `to` is true for `cvta.to`.
    Cvta {
        /// `cvta.to.space` (generic to space) when true.
        to: bool,
        /// The state space.
        space: Space,
    },
    /// `setp.cmp{.bool}{.ftz}.ty p{|q}, a, b{, {!}c}`; the flag is `.ftz`.
    Setp(Cmp, Option<BoolOp>, Ty, bool),
    /// `selp.ty d, a, b, c`.
    Selp(Ty),
    /// `ld.space{.vN}.ty d, [a]`; `vec` is 1, 2 or 4.
    Ld(Space, Ty, u8),
    /// `st.space{.vN}.ty [a], b`.
    St(Space, Ty, u8),
    /// `atom.space.op.ty d, [a], b{, c}` (`red` has no `d`: `has_dst` false).
    Atom {
        /// The state space.
        space: Space,
        /// The operation.
        op: AtomOp,
        /// The operand type.
        ty: Ty,
        /// Whether the old value is returned (`atom`) or not (`red`).
        has_dst: bool,
    },
    /// `bra{.uni} target`.
    Bra,
    /// `ret` / `exit`.
    Exit,
    /// `bar.sync a{, b}` / `barrier.sync{.aligned}`.
    Bar,
    /// `membar` / `fence` / `bar.warp.sync`: no effect in a sequential model.
    Nop,
    /// `shfl.sync.mode.b32 d{|p}, a, b, c, membermask`.
    Shfl(ShflMode),
    /// `vote.sync.mode.{pred,b32} d, {!}a, membermask`.
    Vote(VoteMode),
    /// `redux.sync.op.ty d, a, membermask` (op: add, min, max, and, or, xor as [`IBin`]).
    Redux(IBin, Ty),
    /// `cp.async.{ca,cg}.shared.global [d], [s], size{, src_size}`.
    CpAsync(u32),
    /// `cp.async.commit_group`.
    CpAsyncCommit,
    /// `cp.async.wait_group n`: waits until at most `n` committed groups are pending.
    CpAsyncWait(u32),
    /// `cp.async.wait_all`: commits, then waits for every group.
    CpAsyncWaitAll,
    /// `ldmatrix.sync.aligned.m8n8.xN{.trans}.shared.b16 {d..}, [a]`.
    Ldmatrix {
        /// Number of 8x8 matrices (1, 2 or 4).
        num: u8,
        /// `.trans`
        trans: bool,
    },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 d, a, b, c`; true
    /// for bf16 inputs.
    Mma(bool),
    /// `fence.proxy.async{.shared::cta}`: this warp's shared-memory writes become visible to
    /// the async proxy (what `wgmma.mma_async` reads through).
    FenceProxyAsync,
    /// `wgmma.fence.sync.aligned`.
    WgmmaFence,
    /// `wgmma.commit_group.sync.aligned`.
    WgmmaCommit,
    /// `wgmma.wait_group.sync.aligned n`: waits until at most `n` committed groups are
    /// pending.
    WgmmaWait(u32),
    /// `wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16 d, a-desc, b-desc, scale-d,
    /// imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b` (both operands in shared memory).
    Wgmma(u16),
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n` (`true`: inc): sets the warp's registers per
    /// thread to `n`, giving registers back to the CTA's pool or taking them from it (an inc
    /// waits until the pool has them).
    SetMaxNreg(bool),
    /// `mbarrier.*.shared::cta.b64` on an mbarrier object in shared memory.
    Mbarrier(MbarOp),
    /// `cp.async.bulk.tensor.{n}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
    /// [dst], [tensor-map, {c0, ..}], [mbar]`: one box of a tensor map into shared memory,
    /// its bytes completing on the mbarrier.
    TmaLoad(u8),
}

/// The forms of `mbarrier` (operands as listed, destination first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MbarOp {
    /// `init [a], count`
    Init,
    /// `arrive state, [a]{, count}` (`state` may be the sink `_`)
    Arrive,
    /// `arrive.expect_tx state, [a], tx`
    ArriveExpectTx,
    /// `expect_tx [a], tx`
    ExpectTx,
    /// `try_wait.parity p, [a], parity{, suspend-hint}`: the interpreter holds the thread
    /// until the answer is true (a GPU may also say false after a time limit).
    TryWaitParity,
    /// `inval [a]`
    Inval,
}

impl Op {
    /// Whether the instruction is a warp collective that parks lanes until the member mask
    /// (or the whole warp for `.aligned` forms) arrives.
    pub fn is_warp_collective(&self) -> bool {
        matches!(
            self,
            Op::Shfl(_)
                | Op::Vote(_)
                | Op::Redux(..)
                | Op::Ldmatrix { .. }
                | Op::Mma(_)
                | Op::WgmmaFence
                | Op::WgmmaCommit
                | Op::WgmmaWait(_)
                | Op::Wgmma(_)
        )
    }
}

/// Instruction classes that the counters report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Integer arithmetic, logic, moves, conversions and predicates.
    Int,
    /// Single-precision float arithmetic.
    Fp32,
    /// Double-precision float arithmetic.
    Fp64,
    /// Special-function unit (approximate transcendental functions, rcp, rsqrt, sqrt).
    Sfu,
    /// Loads, stores, atomics and async copies.
    Memory,
    /// Branches and exits.
    Control,
    /// Barriers and warp collectives (except tensor).
    Sync,
    /// `ldmatrix`, `mma` and `wgmma`.
    Tensor,
}

/// One decoded instruction.
#[derive(Clone, Debug)]
pub struct Inst {
    /// The opcode and its modifiers.
    pub op: Op,
    /// `@%p` / `@!%p` guard: register index and whether negated.
    pub guard: Option<(u32, bool)>,
    /// Operands, destination first.
    pub ops: Vec<Operand>,
    /// Counter class.
    pub class: Class,
}

/// A register's declared width in bits (1 for predicates).
#[derive(Clone, Copy, Debug)]
pub struct RegInfo {
    /// Declared width in bits.
    pub bits: u32,
}

/// A kernel parameter: its byte offset in the parameter buffer and its width.
#[derive(Clone, Debug)]
pub struct Param {
    /// The parameter's name in the PTX.
    pub name: String,
    /// Byte offset in the parameter buffer.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A decoded `.entry`.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The entry's name.
    pub name: String,
    /// Parameters in order.
    pub params: Vec<Param>,
    /// Size of the parameter buffer in bytes.
    pub param_bytes: u32,
    /// Register file layout.
    pub regs: Vec<RegInfo>,
    /// Register names, for messages.
    pub reg_names: Vec<String>,
    /// Static shared memory in bytes (dynamic shared memory starts here, 16-aligned).
    pub static_shared: u32,
    /// Per-thread local memory in bytes (`.local` arrays).
    pub local_bytes: u32,
    /// Registers per thread at launch when the entry states its launch bounds (`.maxntid`
    /// and `.minnctapersm`): the share of the 65,536-register file each thread of that many
    /// CTAs gets, in the allocation unit of 8, at most 256 (what ptxas gives a kernel that
    /// moves registers with `setmaxnreg`).
    pub launch_regs: Option<u32>,
    /// Registers that hold constants from vector operands (`{0, %rs1}`), set at thread start.
    pub const_regs: Vec<(u32, u64)>,
    /// The instructions.
    pub insts: Vec<Inst>,
    /// Each instruction's source text and line, for messages.
    pub text: Vec<(u32, String)>,
}

/// A parsed module: its kernels by name.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// Kernels by name.
    pub kernels: HashMap<String, Kernel>,
    /// Initial bytes of the module's `.global` / `.const` variables, to be placed in device
    /// memory at the base address given to the parser.
    pub data: Vec<u8>,
}
