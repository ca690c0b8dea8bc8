//! Decodes one instruction (opcode with dotted modifiers, parsed operands) into an [`Inst`].
//! Every modifier must be understood: a leftover one is an error, never ignored silently.

use super::ir::{
    AtomOp, BoolOp, Class, Cmp, FMod, FUnary, IBin, IUnary, Inst, MbarOp, MulMode, Op, Operand,
    Rnd, ShflMode, Space, Ty, VoteMode,
};
use super::parse::Raw;

/// The modifiers of an opcode, with a record of which were understood.
struct Mods<'a> {
    parts: Vec<&'a str>,
    used: Vec<bool>,
}

impl<'a> Mods<'a> {
    fn new(parts: Vec<&'a str>) -> Self {
        let used = vec![false; parts.len()];
        Mods { parts, used }
    }

    fn has(&mut self, m: &str) -> bool {
        for (i, p) in self.parts.iter().enumerate() {
            if !self.used[i] && *p == m {
                self.used[i] = true;
                return true;
            }
        }
        false
    }

    fn one_of(&mut self, set: &[&'a str]) -> Option<&'a str> {
        for (i, p) in self.parts.iter().enumerate() {
            if !self.used[i] && set.contains(p) {
                self.used[i] = true;
                return Some(p);
            }
        }
        None
    }

    /// Marks modifiers with no effect in a sequential model (cache hints, memory-order
    /// scopes) as understood.
    fn drop_hints(&mut self) {
        for (i, p) in self.parts.iter().enumerate() {
            let hint = matches!(
                *p,
                "ca" | "cg"
                    | "cs"
                    | "lu"
                    | "cv"
                    | "wb"
                    | "wt"
                    | "nc"
                    | "volatile"
                    | "relaxed"
                    | "acquire"
                    | "release"
                    | "acq_rel"
                    | "sc"
                    | "weak"
                    | "cta"
                    | "gpu"
                    | "sys"
                    | "cluster"
            ) || p.starts_with("L1::")
                || p.starts_with("L2::");
            if hint {
                self.used[i] = true;
            }
        }
    }

    /// The first not-yet-used modifier that `parse` accepts, parsed.
    fn take_shape<T>(&mut self, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
        for (i, p) in self.parts.iter().enumerate() {
            if !self.used[i] {
                if let Some(v) = parse(p) {
                    self.used[i] = true;
                    return Some(v);
                }
            }
        }
        None
    }

    /// All not-yet-used type modifiers, in order.
    fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            if !self.used[i] {
                if let Some(t) = Ty::from_name(p) {
                    self.used[i] = true;
                    out.push(t);
                }
            }
        }
        out
    }

    fn ty(&mut self) -> Result<Ty, String> {
        let t = self.types();
        match t.as_slice() {
            [t] => Ok(*t),
            [] => Err("missing type modifier".into()),
            _ => Err(format!("expected one type modifier, found {t:?}")),
        }
    }

    fn rnd(&mut self) -> Option<Rnd> {
        self.one_of(&["rn", "rz", "rm", "rp"]).map(|r| match r {
            "rn" => Rnd::Nearest,
            "rz" => Rnd::Zero,
            "rm" => Rnd::Down,
            _ => Rnd::Up,
        })
    }

    fn int_rnd(&mut self) -> Option<Rnd> {
        self.one_of(&["rni", "rzi", "rmi", "rpi"]).map(|r| match r {
            "rni" => Rnd::Nearest,
            "rzi" => Rnd::Zero,
            "rmi" => Rnd::Down,
            _ => Rnd::Up,
        })
    }

    fn space(&mut self) -> Space {
        match self.one_of(&["global", "shared", "shared::cta", "param", "const", "local"]) {
            Some("global") => Space::Global,
            Some("local") => Space::Local,
            Some("shared") | Some("shared::cta") => Space::Shared,
            Some("param") => Space::Param,
            Some("const") => Space::Const,
            _ => Space::Generic,
        }
    }

    fn finish(&self) -> Result<(), String> {
        let left: Vec<&str> = self
            .parts
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|(p, _)| *p)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("unsupported modifier(s) .{}", left.join(" .")))
        }
    }
}

fn fmod(m: &mut Mods, ty: Ty) -> Result<FMod, String> {
    if !matches!(ty, Ty::F32 | Ty::F64) {
        return Err(format!("float arithmetic on .{ty:?} is not supported"));
    }
    Ok(FMod {
        ty,
        rnd: m.rnd().unwrap_or(Rnd::Nearest),
        ftz: m.has("ftz"),
        sat: m.has("sat"),
    })
}

fn is_float(t: Ty) -> bool {
    matches!(t, Ty::F32 | Ty::F64)
}

/// Converts parsed operands to decoded ones for an instruction of type `ty` (used for
/// decimal float literals).
fn operands(
    raws: Vec<Raw>,
    ty: Option<Ty>,
    on_label: &mut dyn FnMut(&str),
) -> Result<Vec<Operand>, String> {
    let mut out = Vec::with_capacity(raws.len() + 1);
    for r in raws {
        match r {
            Raw::Op(o) => out.push(o),
            Raw::Tensor(a, v) => {
                out.push(a);
                out.push(v);
            }
            Raw::Pipe(a, b) => out.push(Operand::Vec(vec![Some(a), Some(b)])),
            Raw::FloatLit(v) => out.push(match ty {
                Some(Ty::F32) => Operand::Imm((v as f32).to_bits() as u64),
                Some(Ty::F64) => Operand::Imm(v.to_bits()),
                _ => return Err(format!("float literal {v} in a non-float instruction")),
            }),
            Raw::LabelName(n) => {
                on_label(&n);
                out.push(Operand::Label(u32::MAX));
            }
        }
    }
    Ok(out)
}

fn expect_ops(ops: &[Operand], n: usize) -> Result<(), String> {
    if ops.len() == n {
        Ok(())
    } else {
        Err(format!("expected {n} operands, found {}", ops.len()))
    }
}

/// Decodes `opcode` (e.g. `"ld.global.nc.v4.f32"`) with its operands.
pub fn decode_inst(
    guard: Option<(u32, bool)>,
    opcode: &str,
    raws: Vec<Raw>,
    on_label: &mut dyn FnMut(&str),
) -> Result<Inst, String> {
    let mut parts = opcode.split('.');
    let mnem = parts.next().unwrap_or("");
    let mut m = Mods::new(parts.collect());
    let nraw = raws.len();
    let (op, class, ty_for_lits) = decode_op(mnem, &mut m, nraw)?;
    m.finish()?;
    let mut ops = operands(raws, ty_for_lits, on_label)?;
    let op = match op {
        Op::CpAsyncWait(u32::MAX) => match ops.as_slice() {
            [Operand::Imm(n)] => {
                let n = *n as u32;
                ops.clear();
                Op::CpAsyncWait(n)
            }
            _ => return Err("cp.async.wait_group needs a constant group count".into()),
        },
        Op::WgmmaWait(u32::MAX) => match ops.as_slice() {
            [Operand::Imm(n)] => {
                let n = *n as u32;
                ops.clear();
                Op::WgmmaWait(n)
            }
            _ => return Err("wgmma.wait_group needs a constant group count".into()),
        },
        Op::CpAsync(_) => match ops.get(2) {
            Some(Operand::Imm(n)) if matches!(*n, 4 | 8 | 16) => Op::CpAsync(*n as u32),
            _ => return Err("cp.async copy size must be the constant 4, 8 or 16".into()),
        },
        op => op,
    };
    let want = match &op {
        Op::IBin(..) | Op::Mul(..) | Op::PredBin(_) | Op::FArith(..) | Op::FDiv(..) => 3,
        Op::FMinMax(..) | Op::Copysign(_) => 3,
        Op::IUnary(..) | Op::PredNot | Op::FUnary(..) | Op::Testp(..) | Op::Mov(_) => 2,
        Op::Cvt { .. } | Op::Cvta { .. } => 2,
        Op::Bfe(_) | Op::Prmt => 4,
        Op::Lop3 => 5,
        Op::Activemask => 1,
        Op::Bfi(_) => 5,
        Op::HArith(op, ..) => {
            if *op == 3 {
                4
            } else {
                3
            }
        }
        Op::Mad(..) | Op::Fma(_) | Op::Selp(_) | Op::CvtPack(..) | Op::Mma(_) => {
            if matches!(op, Op::Mma(_)) {
                4
            } else if matches!(op, Op::CvtPack(..)) {
                3
            } else {
                4
            }
        }
        Op::Ld(..) | Op::St(..) | Op::Ldmatrix { .. } => 2,
        Op::Shfl(_) => 5,
        Op::Vote(_) | Op::Redux(..) => 3,
        Op::Bra => 1,
        Op::Exit | Op::CpAsyncCommit | Op::CpAsyncWaitAll => 0,
        Op::FenceProxyAsync | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait(_) => 0,
        // A from registers has no imm-trans-a.
        Op::Wgmma(_) if matches!(ops.get(1), Some(Operand::Vec(_))) => 7,
        Op::Wgmma(_) => 8,
        Op::CpAsyncWait(n) => usize::from(*n == u32::MAX),
        Op::Setp(_, comb, _, _) => {
            if comb.is_some() {
                4
            } else {
                3
            }
        }
        Op::Atom { op, has_dst, .. } => {
            (if *has_dst { 3 } else { 2 }) + usize::from(*op == AtomOp::Cas)
        }
        Op::Bar | Op::Nop | Op::CpAsync(_) | Op::Mbarrier(_) => ops.len(),
        Op::TmaLoad(_) => 4,
        Op::SetMaxNreg(_) => match ops.as_slice() {
            [Operand::Imm(n)] if (24..=256).contains(n) && n % 8 == 0 => 1,
            _ => {
                return Err(
                    "setmaxnreg needs a constant register count, a multiple of 8 from 24 to \
                     256"
                    .into(),
                )
            }
        },
    };
    expect_ops(&ops, want)?;
    check_shapes(&op, &ops)?;
    Ok(Inst {
        op,
        guard,
        ops,
        class,
    })
}

fn check_shapes(op: &Op, ops: &[Operand]) -> Result<(), String> {
    let is_addr = |o: &Operand| matches!(o, Operand::Addr { .. });
    let vec_len = |o: &Operand| match o {
        Operand::Vec(v) => v.len(),
        _ => 1,
    };
    let (ok, what) = match op {
        Op::Ld(_, _, v) => (
            is_addr(&ops[1]) && vec_len(&ops[0]) == *v as usize,
            "ld needs `d, [addr]` with as many destinations as .vN",
        ),
        Op::St(_, _, v) => (
            is_addr(&ops[0]) && vec_len(&ops[1]) == *v as usize,
            "st needs `[addr], v` with as many sources as .vN",
        ),
        Op::Atom { has_dst, .. } => (
            is_addr(&ops[usize::from(*has_dst)]),
            "atom/red needs an [address] operand",
        ),
        Op::Ldmatrix { num, .. } => (
            vec_len(&ops[0]) == *num as usize && is_addr(&ops[1]),
            "ldmatrix needs {d..} with .xN registers and an [address]",
        ),
        Op::Mma(_) => (
            ops.iter().map(vec_len).eq([4, 4, 2, 4]),
            "mma.m16n8k16 needs vectors of 4, 4, 2 and 4 registers",
        ),
        Op::CpAsync(_) => (
            (3..=4).contains(&ops.len()) && is_addr(&ops[0]) && is_addr(&ops[1]),
            "cp.async needs [dst], [src], size{, src_size}",
        ),
        Op::Wgmma(n) => (
            vec_len(&ops[0]) == *n as usize / 2
                && (matches!(&ops[1], Operand::Reg(_))
                    || matches!(&ops[1], Operand::Vec(v) if v.len() == 4))
                && ops[2..4].iter().all(|o| matches!(o, Operand::Reg(_)))
                && ops[4..].iter().all(|o| matches!(o, Operand::Imm(_))),
            "wgmma.mma_async needs {d..} (N / 2 registers), a-desc (or {a0, a1, a2, a3}), \
             b-desc and scale-d registers, then the immediates",
        ),
        Op::Bra => (matches!(ops[0], Operand::Label(_)), "bra needs a label"),
        Op::Mbarrier(kind) => {
            let (addr_at, n) = match kind {
                MbarOp::Init | MbarOp::ExpectTx => (0, 2..=2),
                MbarOp::Inval => (0, 1..=1),
                MbarOp::Arrive => (1, 2..=3),
                MbarOp::ArriveExpectTx => (1, 3..=3),
                MbarOp::TryWaitParity => (1, 3..=4),
            };
            (
                n.contains(&ops.len()) && is_addr(&ops[addr_at]),
                "mbarrier operands: `init [a], n`, `inval [a]`, `arrive s, [a]{, n}`, \
                 `arrive.expect_tx s, [a], tx`, `expect_tx [a], tx`, `try_wait.parity p, [a], \
                 parity{, hint}`",
            )
        }
        Op::TmaLoad(dims) => (
            ops.len() == 4
                && is_addr(&ops[0])
                && is_addr(&ops[1])
                && vec_len(&ops[2]) == *dims as usize
                && is_addr(&ops[3]),
            "cp.async.bulk.tensor needs [dst], [tensor-map, {c0, ..}] (one coordinate per \
             dimension), [mbarrier]",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

type Decoded = (Op, Class, Option<Ty>);

fn decode_op(mnem: &str, m: &mut Mods, nraw: usize) -> Result<Decoded, String> {
    let int_class = |t: Ty| {
        if t == Ty::F64 {
            Class::Fp64
        } else {
            Class::Fp32
        }
    };
    Ok(match mnem {
        "add" | "sub" | "mul" | "fma"
            if m.parts
                .iter()
                .any(|p| matches!(*p, "bf16" | "bf16x2" | "f16" | "f16x2")) =>
        {
            if m.rnd().is_some_and(|r| r != Rnd::Nearest) {
                return Err("16-bit float arithmetic supports only .rn".into());
            }
            let t = m.ty()?;
            let op = match mnem {
                "add" => 0,
                "sub" => 1,
                "mul" => 2,
                _ => 3,
            };
            let bf16 = matches!(t, Ty::Bf16 | Ty::Bf16x2);
            let pair = matches!(t, Ty::Bf16x2 | Ty::F16x2);
            (Op::HArith(op, bf16, pair), Class::Fp32, None)
        }
        "add" | "sub" => {
            let t = m.ty()?;
            if is_float(t) {
                let f = fmod(m, t)?;
                (
                    Op::FArith(if mnem == "add" { 0 } else { 1 }, f),
                    int_class(t),
                    Some(t),
                )
            } else {
                let b = if mnem == "add" { IBin::Add } else { IBin::Sub };
                (Op::IBin(b, t), Class::Int, Some(t))
            }
        }
        "mul" | "mad" => {
            let t = m.ty()?;
            if is_float(t) {
                let f = fmod(m, t)?;
                if mnem == "mul" {
                    (Op::FArith(2, f), int_class(t), Some(t))
                } else {
                    (Op::Fma(f), int_class(t), Some(t))
                }
            } else {
                let mode = match m.one_of(&["lo", "hi", "wide"]) {
                    Some("lo") => MulMode::Lo,
                    Some("hi") => MulMode::Hi,
                    Some(_) => MulMode::Wide,
                    None => return Err(format!("{mnem} needs .lo, .hi or .wide")),
                };
                if mode == MulMode::Wide && t.bits() == 64 {
                    return Err(format!("{mnem}.wide on 64-bit operands"));
                }
                let op = if mnem == "mul" {
                    Op::Mul(mode, t)
                } else {
                    Op::Mad(mode, t)
                };
                (op, Class::Int, Some(t))
            }
        }
        "fma" => {
            let t = m.ty()?;
            (Op::Fma(fmod(m, t)?), int_class(t), Some(t))
        }
        "div" => {
            let t = m.ty()?;
            if is_float(t) {
                let approx = m.one_of(&["approx", "full"]).is_some();
                let f = fmod(m, t)?;
                (Op::FDiv(f, approx), Class::Sfu, Some(t))
            } else {
                (Op::IBin(IBin::Div, t), Class::Int, Some(t))
            }
        }
        "rem" => {
            let t = m.ty()?;
            (Op::IBin(IBin::Rem, t), Class::Int, Some(t))
        }
        "min" | "max" => {
            let t = m.ty()?;
            if is_float(t) {
                let f = fmod(m, t)?;
                (Op::FMinMax(mnem == "max", f), int_class(t), Some(t))
            } else {
                let b = if mnem == "min" { IBin::Min } else { IBin::Max };
                (Op::IBin(b, t), Class::Int, Some(t))
            }
        }
        "and" | "or" | "xor" => {
            let t = m.ty()?;
            if t == Ty::Pred {
                let b = match mnem {
                    "and" => BoolOp::And,
                    "or" => BoolOp::Or,
                    _ => BoolOp::Xor,
                };
                (Op::PredBin(b), Class::Int, Some(t))
            } else {
                let b = match mnem {
                    "and" => IBin::And,
                    "or" => IBin::Or,
                    _ => IBin::Xor,
                };
                (Op::IBin(b, t), Class::Int, Some(t))
            }
        }
        "not" => {
            let t = m.ty()?;
            if t == Ty::Pred {
                (Op::PredNot, Class::Int, Some(t))
            } else {
                (Op::IUnary(IUnary::Not, t), Class::Int, Some(t))
            }
        }
        "shl" | "shr" => {
            let t = m.ty()?;
            let b = if mnem == "shl" { IBin::Shl } else { IBin::Shr };
            (Op::IBin(b, t), Class::Int, Some(t))
        }
        "popc" | "clz" | "brev" => {
            let t = m.ty()?;
            let u = match mnem {
                "popc" => IUnary::Popc,
                "clz" => IUnary::Clz,
                _ => IUnary::Brev,
            };
            (Op::IUnary(u, t), Class::Int, Some(t))
        }
        "neg" | "abs" => {
            let t = m.ty()?;
            if is_float(t) {
                let u = if mnem == "neg" {
                    FUnary::Neg
                } else {
                    FUnary::Abs
                };
                (Op::FUnary(u, fmod(m, t)?, false), int_class(t), Some(t))
            } else {
                let u = if mnem == "neg" {
                    IUnary::Neg
                } else {
                    IUnary::Abs
                };
                (Op::IUnary(u, t), Class::Int, Some(t))
            }
        }
        "rcp" | "sqrt" | "rsqrt" | "ex2" | "lg2" | "sin" | "cos" | "tanh" => {
            let approx = m.has("approx");
            let t = m.ty()?;
            let f = fmod(m, t)?;
            let u = match mnem {
                "rcp" => FUnary::Rcp,
                "sqrt" => FUnary::Sqrt,
                "rsqrt" => FUnary::Rsqrt,
                "ex2" => FUnary::Ex2,
                "lg2" => FUnary::Lg2,
                "sin" => FUnary::Sin,
                "cos" => FUnary::Cos,
                _ => FUnary::Tanh,
            };
            let must_approx = matches!(
                u,
                FUnary::Rsqrt
                    | FUnary::Ex2
                    | FUnary::Lg2
                    | FUnary::Sin
                    | FUnary::Cos
                    | FUnary::Tanh
            );
            if must_approx && !approx && t == Ty::F32 {
                return Err(format!("{mnem}.f32 needs .approx"));
            }
            if !approx && !matches!(u, FUnary::Rcp | FUnary::Sqrt) {
                return Err(format!("{mnem} without .approx"));
            }
            (Op::FUnary(u, f, approx), Class::Sfu, Some(t))
        }
        "copysign" => {
            let t = m.ty()?;
            (Op::Copysign(t), int_class(t), Some(t))
        }
        "testp" => {
            let k = match m.one_of(&[
                "finite",
                "infinite",
                "number",
                "notanumber",
                "normal",
                "subnormal",
            ]) {
                Some("finite") => 0,
                Some("infinite") => 1,
                Some("number") => 2,
                Some("notanumber") => 3,
                Some("normal") => 4,
                Some(_) => 5,
                None => return Err("testp needs a test".into()),
            };
            let t = m.ty()?;
            (Op::Testp(k, t), int_class(t), Some(t))
        }
        "mov" => {
            let t = m.ty()?;
            (Op::Mov(t), Class::Int, Some(t))
        }
        "lop3" => {
            if m.ty()? != Ty::B32 {
                return Err("lop3 needs .b32 (the predicate forms are not supported)".into());
            }
            (Op::Lop3, Class::Int, None)
        }
        "activemask" => {
            if m.ty()? != Ty::B32 {
                return Err("activemask needs .b32".into());
            }
            (Op::Activemask, Class::Int, None)
        }
        "prmt" => {
            if m.ty()? != Ty::B32 {
                return Err("prmt needs .b32".into());
            }
            (Op::Prmt, Class::Int, None)
        }
        "bfi" | "bfe" => {
            let t = m.ty()?;
            if !matches!(t.bits(), 32 | 64) || t.is_float() {
                return Err(format!("{mnem} on .{t:?}"));
            }
            let op = if mnem == "bfi" {
                Op::Bfi(t)
            } else {
                Op::Bfe(t)
            };
            (op, Class::Int, Some(t))
        }
        "cvt" => decode_cvt(m, nraw)?,
        "cvta" => {
            let to = m.has("to");
            let space = m.space();
            if !matches!(
                space,
                Space::Global | Space::Shared | Space::Param | Space::Const
            ) {
                return Err("cvta needs a state space".into());
            }
            let t = m.ty()?;
            if !matches!(t, Ty::U32 | Ty::U64) {
                return Err("cvta needs .u32 or .u64".into());
            }
            (Op::Cvta { to, space }, Class::Int, None)
        }
        "setp" => {
            let cmp = match m.one_of(&[
                "eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu",
                "leu", "gtu", "geu", "num", "nan",
            ]) {
                Some(c) => match c {
                    "eq" => Cmp::Eq,
                    "ne" => Cmp::Ne,
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    "ge" => Cmp::Ge,
                    "lo" => Cmp::Lo,
                    "ls" => Cmp::Ls,
                    "hi" => Cmp::Hi,
                    "hs" => Cmp::Hs,
                    "equ" => Cmp::Equ,
                    "neu" => Cmp::Neu,
                    "ltu" => Cmp::Ltu,
                    "leu" => Cmp::Leu,
                    "gtu" => Cmp::Gtu,
                    "geu" => Cmp::Geu,
                    "num" => Cmp::Num,
                    _ => Cmp::Nan,
                },
                None => return Err("setp needs a comparison".into()),
            };
            let comb = match m.one_of(&["and", "or", "xor"]) {
                Some("and") => Some(BoolOp::And),
                Some("or") => Some(BoolOp::Or),
                Some(_) => Some(BoolOp::Xor),
                None => None,
            };
            let ftz = m.has("ftz");
            let t = m.ty()?;
            if ftz && t != Ty::F32 {
                return Err("setp.ftz on a non-f32 type".into());
            }
            (Op::Setp(cmp, comb, t, ftz), Class::Int, Some(t))
        }
        "selp" => {
            let t = m.ty()?;
            (Op::Selp(t), Class::Int, Some(t))
        }
        "ld" | "st" => {
            m.drop_hints();
            let space = m.space();
            let v = match m.one_of(&["v2", "v4"]) {
                Some("v2") => 2,
                Some(_) => 4,
                None => 1,
            };
            let t = m.ty()?;
            if t == Ty::Pred {
                return Err(format!("{mnem}.pred"));
            }
            let op = if mnem == "ld" {
                Op::Ld(space, t, v)
            } else {
                if space == Space::Param || space == Space::Const {
                    return Err(format!("st to {space:?} space"));
                }
                Op::St(space, t, v)
            };
            (op, Class::Memory, Some(t))
        }
        "atom" | "red" => {
            m.drop_hints();
            let space = m.space();
            let op = match m.one_of(&[
                "add", "min", "max", "and", "or", "xor", "exch", "cas", "inc", "dec",
            ]) {
                Some("add") => AtomOp::Add,
                Some("min") => AtomOp::Min,
                Some("max") => AtomOp::Max,
                Some("and") => AtomOp::And,
                Some("or") => AtomOp::Or,
                Some("xor") => AtomOp::Xor,
                Some("exch") => AtomOp::Exch,
                Some("cas") => AtomOp::Cas,
                Some("inc") => AtomOp::Inc,
                Some("dec") => AtomOp::Dec,
                _ => return Err(format!("{mnem} needs an operation")),
            };
            let t = m.ty()?;
            if !matches!(t.bits(), 32 | 64) {
                return Err(format!("{mnem} on {}-bit operands", t.bits()));
            }
            if is_float(t) && !matches!(op, AtomOp::Add | AtomOp::Exch) {
                return Err(format!("{mnem}.{op:?} on a float type"));
            }
            if space == Space::Param || space == Space::Const {
                return Err(format!("{mnem} on {space:?} space"));
            }
            let has_dst = mnem == "atom";
            (
                Op::Atom {
                    space,
                    op,
                    ty: t,
                    has_dst,
                },
                Class::Memory,
                Some(t),
            )
        }
        "bra" => {
            m.has("uni");
            (Op::Bra, Class::Control, None)
        }
        "ret" | "exit" => (Op::Exit, Class::Control, None),
        "bar" | "barrier" => {
            if m.has("warp") {
                m.has("sync");
                return Ok((Op::Nop, Class::Sync, None));
            }
            if !m.has("sync") && !m.has("cta") {
                return Err(format!("{mnem} without .sync"));
            }
            m.has("sync");
            m.has("aligned");
            (Op::Bar, Class::Sync, None)
        }
        "fence" if m.has("mbarrier_init") => {
            // Makes `mbarrier.init` visible to other CTAs of a cluster: nothing to order in
            // a CTA run alone.
            m.drop_hints();
            (Op::Nop, Class::Sync, None)
        }
        "mbarrier" => decode_mbarrier(m)?,
        "setmaxnreg" => {
            if !(m.has("sync") && m.has("aligned") && m.has("u32")) {
                return Err("setmaxnreg must be .sync.aligned.u32".into());
            }
            let inc = m
                .one_of(&["inc", "dec"])
                .ok_or("setmaxnreg needs .inc or .dec")?
                == "inc";
            (Op::SetMaxNreg(inc), Class::Sync, None)
        }
        "fence" if m.has("proxy") => {
            if !m.has("async") {
                return Err("only fence.proxy.async is supported among proxy fences".into());
            }
            m.one_of(&["shared::cta", "shared::cluster", "global"]);
            (Op::FenceProxyAsync, Class::Sync, None)
        }
        "membar" | "fence" => {
            m.one_of(&["gl", "cta", "sys", "gpu"]);
            m.drop_hints();
            (Op::Nop, Class::Sync, None)
        }
        "wgmma" => decode_wgmma(m)?,
        "shfl" => {
            if !m.has("sync") {
                return Err("shfl without .sync (pre-sm_70 form) is not supported".into());
            }
            let mode = match m.one_of(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some(_) => ShflMode::Idx,
                None => return Err("shfl needs a mode".into()),
            };
            if m.ty()? != Ty::B32 {
                return Err("shfl needs .b32".into());
            }
            (Op::Shfl(mode), Class::Sync, None)
        }
        "redux" => {
            if !m.has("sync") {
                return Err("redux without .sync".into());
            }
            let op = match m.one_of(&["add", "min", "max", "and", "or", "xor"]) {
                Some("add") => IBin::Add,
                Some("min") => IBin::Min,
                Some("max") => IBin::Max,
                Some("and") => IBin::And,
                Some("or") => IBin::Or,
                Some(_) => IBin::Xor,
                None => return Err("redux.sync needs an operation".into()),
            };
            let t = m.ty()?;
            let ok = match op {
                IBin::Add | IBin::Min | IBin::Max => matches!(t, Ty::U32 | Ty::S32),
                _ => t == Ty::B32,
            };
            if !ok {
                return Err(format!("redux.sync.{op:?} on .{t:?}"));
            }
            (Op::Redux(op, t), Class::Sync, None)
        }
        "vote" => {
            if !m.has("sync") {
                return Err("vote without .sync is not supported".into());
            }
            let mode = match m.one_of(&["all", "any", "uni", "ballot"]) {
                Some("all") => VoteMode::All,
                Some("any") => VoteMode::Any,
                Some("uni") => VoteMode::Uni,
                Some(_) => VoteMode::Ballot,
                None => return Err("vote needs a mode".into()),
            };
            let t = m.ty()?;
            if (mode == VoteMode::Ballot) != (t == Ty::B32) {
                return Err("vote.ballot needs .b32, the others .pred".into());
            }
            (Op::Vote(mode), Class::Sync, None)
        }
        "cp" => {
            if !m.has("async") {
                return Err("cp without .async".into());
            }
            if m.has("bulk") {
                decode_tma(m)?
            } else if m.has("commit_group") {
                (Op::CpAsyncCommit, Class::Memory, None)
            } else if m.has("wait_all") {
                (Op::CpAsyncWaitAll, Class::Memory, None)
            } else if m.has("wait_group") {
                // The group count is an operand; it is moved into the op by exec's caller.
                (Op::CpAsyncWait(u32::MAX), Class::Memory, None)
            } else {
                // .ca / .cg only choose a cache level.
                m.one_of(&["ca", "cg"]).ok_or("cp.async needs .ca or .cg")?;
                if !(m.has("shared") || m.has("shared::cta")) || !m.has("global") {
                    return Err("cp.async must copy .shared.global".into());
                }
                m.drop_hints();
                // The copy size is an operand; decode_inst moves it into the op.
                (Op::CpAsync(0), Class::Memory, None)
            }
        }
        "ldmatrix" => {
            if !m.has("sync") || !m.has("aligned") || !m.has("m8n8") {
                return Err("ldmatrix must be .sync.aligned.m8n8".into());
            }
            let num = match m.one_of(&["x1", "x2", "x4"]) {
                Some("x1") => 1,
                Some("x2") => 2,
                Some(_) => 4,
                None => return Err("ldmatrix needs .x1, .x2 or .x4".into()),
            };
            let trans = m.has("trans");
            let sp = m.space();
            if !matches!(sp, Space::Shared | Space::Generic) {
                return Err("ldmatrix reads .shared".into());
            }
            if m.ty()? != Ty::B16 {
                return Err("ldmatrix needs .b16".into());
            }
            (Op::Ldmatrix { num, trans }, Class::Tensor, None)
        }
        "mma" => {
            for must in ["sync", "aligned", "m16n8k16", "row", "col"] {
                if !m.has(must) {
                    return Err(format!(
                        "only mma.sync.aligned.m16n8k16.row.col is supported (missing .{must})"
                    ));
                }
            }
            let t = m.types();
            let bf16 = match t.as_slice() {
                [Ty::F32, Ty::Bf16, Ty::Bf16, Ty::F32] => true,
                [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => false,
                _ => {
                    return Err(format!(
                        "mma types {t:?}: only .f32.bf16.bf16.f32 and .f32.f16.f16.f32"
                    ))
                }
            };
            (Op::Mma(bf16), Class::Tensor, None)
        }
        _ => return Err(format!("unknown instruction {mnem}")),
    })
}

fn decode_mbarrier(m: &mut Mods) -> Result<Decoded, String> {
    if !(m.has("shared::cta") || m.has("shared")) || !m.has("b64") {
        return Err("mbarrier: only the .shared::cta.b64 forms".into());
    }
    let op = if m.has("init") {
        MbarOp::Init
    } else if m.has("inval") {
        MbarOp::Inval
    } else if m.has("arrive") {
        if m.has("expect_tx") {
            MbarOp::ArriveExpectTx
        } else {
            MbarOp::Arrive
        }
    } else if m.has("expect_tx") {
        MbarOp::ExpectTx
    } else if m.has("try_wait") {
        if !m.has("parity") {
            return Err("mbarrier.try_wait: only the .parity form".into());
        }
        MbarOp::TryWaitParity
    } else {
        return Err(
            "mbarrier: only init, inval, arrive{.expect_tx}, expect_tx and try_wait.parity".into(),
        );
    };
    m.drop_hints();
    Ok((Op::Mbarrier(op), Class::Sync, None))
}

fn decode_tma(m: &mut Mods) -> Result<Decoded, String> {
    let dims = m
        .take_shape(|p| match p {
            "1d" => Some(1u8),
            "2d" => Some(2),
            "3d" => Some(3),
            "4d" => Some(4),
            "5d" => Some(5),
            _ => None,
        })
        .ok_or("cp.async.bulk: only the .tensor.{1,2,3,4,5}d forms")?;
    let ok = m.has("tensor")
        && m.has("shared::cluster")
        && m.has("global")
        && m.has("mbarrier::complete_tx::bytes");
    if !ok {
        return Err(
            "cp.async.bulk: only .tensor.Nd.shared::cluster.global{.tile}\
             .mbarrier::complete_tx::bytes"
                .into(),
        );
    }
    m.has("tile");
    Ok((Op::TmaLoad(dims), Class::Memory, None))
}

fn decode_wgmma(m: &mut Mods) -> Result<Decoded, String> {
    if !m.has("sync") || !m.has("aligned") {
        return Err("wgmma must be .sync.aligned".into());
    }
    if m.has("fence") {
        return Ok((Op::WgmmaFence, Class::Tensor, None));
    }
    if m.has("commit_group") {
        return Ok((Op::WgmmaCommit, Class::Tensor, None));
    }
    if m.has("wait_group") {
        // The group count is an operand; decode_inst moves it into the op.
        return Ok((Op::WgmmaWait(u32::MAX), Class::Tensor, None));
    }
    if !m.has("mma_async") {
        return Err("wgmma: only .fence, .commit_group, .wait_group and .mma_async".into());
    }
    let n = m
        .take_shape(|s| {
            let n: u16 = s.strip_prefix("m64n")?.strip_suffix("k16")?.parse().ok()?;
            (n.is_multiple_of(8) && (8..=256).contains(&n)).then_some(n)
        })
        .ok_or("wgmma.mma_async: only the shapes .m64nNk16 (N = 8, 16, ..., 256)")?;
    let t = m.types();
    if t.as_slice() != [Ty::F32, Ty::Bf16, Ty::Bf16] {
        return Err(format!(
            "wgmma.mma_async types {t:?}: only .f32.bf16.bf16 is supported"
        ));
    }
    Ok((Op::Wgmma(n), Class::Tensor, None))
}

fn decode_cvt(m: &mut Mods, nraw: usize) -> Result<Decoded, String> {
    let rnd = m.rnd();
    let irnd = m.int_rnd();
    let ftz = m.has("ftz");
    let sat = m.has("sat");
    m.has("relu")
        .then_some(())
        .map_or(Ok(()), |_| Err("cvt.relu"))?;
    let t = m.types();
    let [dst, src] = t.as_slice() else {
        return Err(format!("cvt needs two types, found {t:?}"));
    };
    let (dst, src) = (*dst, *src);
    if matches!(dst, Ty::Bf16x2 | Ty::F16x2) {
        if src != Ty::F32 || nraw != 3 {
            return Err("cvt to a packed pair needs .f32 and two sources".into());
        }
        if irnd.is_some() || sat || ftz {
            return Err("cvt to a packed pair takes only a rounding mode".into());
        }
        return Ok((
            Op::CvtPack(dst == Ty::Bf16x2, rnd),
            Class::Int,
            Some(Ty::F32),
        ));
    }
    if rnd.is_some() && irnd.is_some() {
        return Err("cvt with two rounding modes".into());
    }
    let float_dst = dst.is_float();
    let float_src = src.is_float();
    // The ISA requires a rounding mode for float-to-int, int-to-float and narrowing
    // float-to-float conversions; insisting catches a misread opcode.
    if float_src && !float_dst && irnd.is_none() {
        return Err("cvt from float to integer needs .rni/.rzi/.rmi/.rpi".into());
    }
    if !float_src && float_dst && rnd.is_none() {
        return Err("cvt from integer to float needs .rn/.rz/.rm/.rp".into());
    }
    if float_src && float_dst && dst.bits() < src.bits() && rnd.is_none() {
        return Err("narrowing float cvt needs .rn/.rz/.rm/.rp".into());
    }
    Ok((
        Op::Cvt {
            dst,
            src,
            rnd: rnd.or(irnd),
            int_rnd: irnd.is_some(),
            ftz,
            sat,
        },
        Class::Int,
        Some(src),
    ))
}
