//! Parser of the PTX subset nvcc 13 emits for our kernels, straight into the decoded IR of
//! [`super::ir`]. Anything outside the subset is an error naming the line and the text.

use std::collections::HashMap;

use super::decode::decode_inst;
use super::ir::{Kernel, Module, Operand, Param, RegInfo, Sreg, Ty};
use super::lex::{tokenize, Tok, Token};
use crate::error::{Error, Result};

/// An operand before the instruction's types are known (literals keep their spelling).
#[derive(Clone, Debug)]
pub enum Raw {
    /// A decoded operand.
    Op(Operand),
    /// A decimal floating-point literal (converted once the instruction type is known).
    FloatLit(f64),
    /// `a|b`: a value and a predicate destination.
    Pipe(u32, u32),
    /// A label name, resolved after the body.
    LabelName(String),
    /// `[a, {c0, ..}]` (a tensor map and coordinates): two operands, the address and the
    /// vector.
    Tensor(Operand, Operand),
}

struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    what: &'a str,
    lines: Vec<&'a str>,
}

fn align_up(x: u32, a: u32) -> u32 {
    x.div_ceil(a.max(1)) * a.max(1)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn line(&self) -> u32 {
        self.toks
            .get(self.pos.min(self.toks.len().saturating_sub(1)))
            .map_or(0, |t| t.line)
    }

    fn err(&self, detail: impl std::fmt::Display) -> Error {
        Error::format(self.what, format!("line {}: {detail}", self.line()))
    }

    fn next(&mut self) -> Result<Tok> {
        let t = self
            .toks
            .get(self.pos)
            .map(|t| t.tok.clone())
            .ok_or_else(|| self.err("unexpected end of module"))?;
        self.pos += 1;
        Ok(t)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{c}', found {:?}", self.peek())))
        }
    }

    fn ident(&mut self) -> Result<String> {
        match self.next()? {
            Tok::Ident(s) => Ok(s),
            t => Err(self.err(format!("expected a name, found {t:?}"))),
        }
    }

    fn number(&mut self) -> Result<u64> {
        match self.next()? {
            Tok::Num(s) => parse_int(&s).ok_or_else(|| self.err(format!("bad number {s}"))),
            t => Err(self.err(format!("expected a number, found {t:?}"))),
        }
    }

    /// Skips to the end of the current statement (after `;`).
    fn skip_statement(&mut self) -> Result<()> {
        while !self.eat(';') {
            self.next()?;
        }
        Ok(())
    }
}

/// Parses an integer literal: decimal, `0x` hex, `0b` binary, or octal with a leading 0;
/// an optional `U` suffix is accepted.
pub fn parse_int(s: &str) -> Option<u64> {
    let s = s.trim_end_matches('U');
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        u64::from_str_radix(b, 2).ok()
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// A module-level `.shared` variable: static ones are laid out in every kernel, the extern
/// one (size unknown) marks the start of dynamic shared memory.
#[derive(Clone)]
struct SharedVar {
    name: String,
    align: u32,
    size: Option<u32>,
}

/// Parses a whole module. `what` names it in messages (e.g. `"ptx module vec_add"`);
/// `data_base` is the device address where the module's `.global`/`.const` variables (the
/// returned [`Module::data`]) will be placed.
pub fn parse_module(src: &str, what: &str, data_base: u64) -> Result<Module> {
    let toks = tokenize(src, what)?;
    let mut p = Parser {
        toks,
        pos: 0,
        what,
        lines: src.lines().collect(),
    };
    let mut module = Module::default();
    let mut module_shared: Vec<SharedVar> = Vec::new();
    let mut globals: HashMap<String, u64> = HashMap::new();
    while let Some(t) = p.peek().cloned() {
        let Tok::Ident(word) = t else {
            return Err(p.err(format!("unexpected {t:?} at module level")));
        };
        match word.as_str() {
            ".version" => {
                p.pos += 1;
                p.next()?;
            }
            ".target" => {
                p.pos += 1;
                p.ident()?;
                while p.eat(',') {
                    p.ident()?;
                }
            }
            ".address_size" => {
                p.pos += 1;
                if p.number()? != 64 {
                    return Err(p.err("only .address_size 64 is supported"));
                }
            }
            ".visible" | ".weak" | ".extern" => {
                p.pos += 1;
                if word == ".extern" && p.peek() == Some(&Tok::Ident(".shared".into())) {
                    p.pos += 1;
                    module_shared.push(shared_decl(&mut p)?);
                }
            }
            ".entry" => {
                p.pos += 1;
                let k = parse_entry(&mut p, &module_shared, &globals)?;
                module.kernels.insert(k.name.clone(), k);
            }
            ".shared" => {
                p.pos += 1;
                module_shared.push(shared_decl(&mut p)?);
            }
            ".func" => {
                return Err(p.err(
                    "device functions (.func) are not supported: the interpreter runs \
                     kernels without call",
                ))
            }
            ".global" | ".const" => {
                p.pos += 1;
                let (name, off) = global_decl(&mut p, &mut module.data)?;
                globals.insert(name, data_base + off);
            }
            ".local" => {
                return Err(p.err("module-level .local variables are not supported"));
            }
            _ => return Err(p.err(format!("unknown module-level directive {word}"))),
        }
    }
    Ok(module)
}

/// After `.global`/`.const`: `{.align N} .type name{[N]} {= {v, ...} | = v};`, appended to
/// `data` (zero where not initialised). Returns the name and its offset in `data`.
fn global_decl(p: &mut Parser, data: &mut Vec<u8>) -> Result<(String, u64)> {
    let mut align = 1;
    let mut ty = None;
    let name = loop {
        let w = p.ident()?;
        if w == ".align" {
            align = p.number()? as usize;
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::from_name) {
            ty = Some(t);
        } else {
            break w;
        };
    };
    let elem = ty.ok_or_else(|| p.err(format!("variable {name} has no type")))?;
    let size = elem.bytes() as usize;
    let mut count = Some(1);
    if p.eat('[') {
        count = if p.eat(']') {
            None
        } else {
            let n = p.number()? as usize;
            p.expect(']')?;
            Some(n)
        };
    }
    let mut values = Vec::new();
    if p.eat('=') {
        let list = p.eat('{');
        loop {
            let neg = p.eat('-');
            let v = match p.next()? {
                Tok::Num(s) => match number_literal(p, &s, neg)? {
                    Raw::Op(Operand::Imm(v)) => v,
                    Raw::FloatLit(f) if elem == Ty::F32 => (f as f32).to_bits() as u64,
                    Raw::FloatLit(f) => f.to_bits(),
                    _ => return Err(p.err(format!("bad initialiser of {name}"))),
                },
                t => return Err(p.err(format!("unsupported initialiser {t:?} of {name}"))),
            };
            values.push(v);
            if !list || p.eat('}') {
                break;
            }
            p.expect(',')?;
        }
    }
    p.expect(';')?;
    let n = count.unwrap_or(values.len());
    if values.len() > n {
        return Err(p.err(format!(
            "{} initialisers for {n} elements of {name}",
            values.len()
        )));
    }
    let off = data.len().div_ceil(align.max(size)) * align.max(size);
    data.resize(off + n * size, 0);
    for (i, v) in values.iter().enumerate() {
        data[off + i * size..off + (i + 1) * size].copy_from_slice(&v.to_le_bytes()[..size]);
    }
    Ok((name, off as u64))
}

/// After `.shared`: `{.align N} .type name[N]{;}` (size absent for extern arrays).
fn shared_decl(p: &mut Parser) -> Result<SharedVar> {
    let mut align = 1;
    let mut ty = None;
    loop {
        let w = p.ident()?;
        if w == ".align" {
            align = p.number()? as u32;
        } else if let Some(t) = w.strip_prefix('.').and_then(Ty::from_name) {
            ty = Some(t);
        } else {
            let elem = ty.ok_or_else(|| p.err(format!("shared variable {w} has no type")))?;
            let mut size = Some(elem.bytes());
            if p.eat('[') {
                if p.eat(']') {
                    size = None;
                } else {
                    size = Some(p.number()? as u32 * elem.bytes());
                    p.expect(']')?;
                }
            }
            if p.eat('=') {
                return Err(p.err(format!("initialised shared variable {w} is not supported")));
            }
            p.expect(';')?;
            return Ok(SharedVar {
                name: w,
                align: align.max(elem.bytes()),
                size,
            });
        }
    }
}

struct Body {
    scopes: Vec<HashMap<String, u32>>,
    regs: Vec<RegInfo>,
    reg_names: Vec<String>,
    shared: HashMap<String, u32>,
    static_shared: u32,
    extern_shared: Vec<SharedVar>,
    frozen: bool,
    params: HashMap<String, u32>,
    local: HashMap<String, u32>,
    local_bytes: u32,
    const_regs: Vec<(u32, u64)>,
    globals: HashMap<String, u64>,
}

impl Body {
    /// A fresh register holding `value` from thread start (for constants in vectors).
    fn const_reg(&mut self, value: u64) -> u32 {
        let idx = self.regs.len() as u32;
        self.regs.push(RegInfo { bits: 64 });
        self.reg_names.push(format!("{{constant {value:#x}}}"));
        self.const_regs.push((idx, value));
        idx
    }

    fn lookup(&self, name: &str) -> Option<u32> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }

    fn declare(&mut self, name: String, bits: u32) {
        let idx = self.regs.len() as u32;
        self.regs.push(RegInfo { bits });
        self.reg_names.push(name.clone());
        self.scopes.last_mut().expect("scope").insert(name, idx);
    }

    fn add_shared(&mut self, v: &SharedVar) {
        if let Some(size) = v.size {
            let off = align_up(self.static_shared, v.align);
            self.shared.insert(v.name.clone(), off);
            self.static_shared = off + size;
        } else {
            self.extern_shared.push(v.clone());
        }
    }

    /// Places extern (dynamic) shared arrays after the statics, once the first instruction
    /// shows that every declaration has been seen.
    fn freeze(&mut self) {
        if self.frozen {
            return;
        }
        self.frozen = true;
        self.static_shared = align_up(self.static_shared, 16);
        for v in std::mem::take(&mut self.extern_shared) {
            let off = align_up(self.static_shared, v.align);
            self.shared.insert(v.name, off);
        }
    }
}

fn parse_entry(
    p: &mut Parser,
    module_shared: &[SharedVar],
    globals: &HashMap<String, u64>,
) -> Result<Kernel> {
    let name = p.ident()?;
    let mut params = Vec::new();
    let mut param_bytes = 0u32;
    p.expect('(')?;
    if !p.eat(')') {
        loop {
            if p.ident()? != ".param" {
                return Err(p.err("expected .param in the parameter list"));
            }
            let mut align = 0;
            let mut ty = None;
            let pname = loop {
                let w = p.ident()?;
                if w == ".align" {
                    align = p.number()? as u32;
                } else if w == ".ptr" || w.starts_with(".global") || w.starts_with(".const") {
                    // `.ptr.global.align N` annotations carry no layout information we need.
                } else if let Some(t) = w.strip_prefix('.').and_then(Ty::from_name) {
                    ty = Some(t);
                } else {
                    break w;
                };
            };
            let elem = ty.ok_or_else(|| p.err(format!("parameter {pname} has no type")))?;
            let mut size = elem.bytes();
            if p.eat('[') {
                size *= p.number()? as u32;
                p.expect(']')?;
            }
            let a = if align > 0 { align } else { elem.bytes() };
            let offset = align_up(param_bytes, a);
            param_bytes = offset + size;
            params.push(Param {
                name: pname,
                offset,
                size,
            });
            if p.eat(')') {
                break;
            }
            p.expect(',')?;
        }
    }
    // Performance directives between the parameter list and the body; the launch bounds
    // are kept (the threads' product and the CTAs per multiprocessor).
    let (mut max_threads, mut min_ctas) = (None, None);
    while let Some(Tok::Ident(w)) = p.peek().cloned() {
        match w.as_str() {
            ".maxntid" | ".reqntid" | ".minnctapersm" | ".maxnreg" | ".maxclusterrank"
            | ".reqnctapercluster" | ".explicitcluster" | ".noreturn" => {
                p.pos += 1;
                let mut product = 1u64;
                while let Some(Tok::Num(n)) = p.peek().cloned() {
                    let n = parse_int(&n).ok_or_else(|| p.err(format!("bad number {n}")))?;
                    product = product.saturating_mul(n.max(1));
                    p.pos += 1;
                    if !p.eat(',') {
                        break;
                    }
                }
                match w.as_str() {
                    ".maxntid" => max_threads = Some(product),
                    ".minnctapersm" => min_ctas = Some(product),
                    _ => {}
                }
            }
            _ => return Err(p.err(format!("unknown entry directive {w}"))),
        }
    }
    p.expect('{')?;
    let mut body = Body {
        scopes: vec![HashMap::new()],
        regs: Vec::new(),
        reg_names: Vec::new(),
        shared: HashMap::new(),
        static_shared: 0,
        extern_shared: Vec::new(),
        frozen: false,
        params: params.iter().map(|q| (q.name.clone(), q.offset)).collect(),
        local: HashMap::new(),
        local_bytes: 0,
        const_regs: Vec::new(),
        globals: globals.clone(),
    };
    for v in module_shared {
        body.add_shared(v);
    }
    let mut insts = Vec::new();
    let mut text = Vec::new();
    let mut labels: HashMap<String, u32> = HashMap::new();
    // Branches to labels not seen yet: (instruction, label, line).
    let mut pending: Vec<(usize, String, u32)> = Vec::new();
    let mut depth = 1;
    while depth > 0 {
        let line = p.line();
        let start = p.pos;
        match p.next()? {
            Tok::Punct('{') => {
                depth += 1;
                body.scopes.push(HashMap::new());
            }
            Tok::Punct('}') => {
                depth -= 1;
                body.scopes.pop();
            }
            Tok::Ident(w) if w == ".reg" => reg_decl(p, &mut body)?,
            Tok::Ident(w) if w == ".shared" => {
                if body.frozen {
                    return Err(p.err("a .shared declaration after the first instruction"));
                }
                let v = shared_decl(p)?;
                body.add_shared(&v);
            }
            Tok::Ident(w) if w == ".pragma" => p.skip_statement()?,
            Tok::Ident(w) if w == ".local" => {
                if body.frozen {
                    return Err(p.err("a .local declaration after the first instruction"));
                }
                let v = shared_decl(p)?;
                let size = v
                    .size
                    .ok_or_else(|| p.err(format!("local array {} has no size", v.name)))?;
                let off = align_up(body.local_bytes, v.align);
                body.local.insert(v.name, off);
                body.local_bytes = off + size;
            }
            Tok::Ident(w) if w.starts_with('.') => {
                return Err(p.err(format!("unknown directive {w} in kernel {name}")))
            }
            Tok::Ident(w) if p.peek() == Some(&Tok::Punct(':')) => {
                p.pos += 1;
                labels.insert(w, insts.len() as u32);
            }
            Tok::Punct('@') | Tok::Ident(_) => {
                p.pos = start;
                body.freeze();
                let (guard, opcode, raws) = parse_statement(p, &mut body)?;
                let src = p
                    .lines
                    .get(line as usize - 1)
                    .map_or(String::new(), |l| l.trim().to_string());
                let inst = decode_inst(guard, &opcode, raws, &mut |label| {
                    pending.push((insts.len(), label.to_string(), line));
                })
                .map_err(|d| Error::format(p.what, format!("line {line}: {d} in `{src}`")))?;
                insts.push(inst);
                text.push((line, src));
            }
            t => return Err(p.err(format!("unexpected {t:?} in kernel {name}"))),
        }
    }
    for (i, label, line) in pending {
        let target = *labels
            .get(&label)
            .ok_or_else(|| Error::format(p.what, format!("line {line}: unknown label {label}")))?;
        for op in &mut insts[i].ops {
            if *op == Operand::Label(u32::MAX) {
                *op = Operand::Label(target);
            }
        }
    }
    body.freeze();
    Ok(Kernel {
        name,
        params,
        param_bytes,
        regs: body.regs,
        reg_names: body.reg_names,
        static_shared: body.static_shared,
        local_bytes: body.local_bytes,
        launch_regs: max_threads.zip(min_ctas).map(|(t, c)| launch_regs(t, c)),
        const_regs: body.const_regs,
        insts,
        text,
    })
}

/// Registers per thread when `ctas` CTAs of `threads` threads (the launch bounds) are
/// resident at once: 65,536 shared out among their warps (a CTA's last warp counts whole),
/// in units of 8, at most 256.
pub fn launch_regs(threads: u64, ctas: u64) -> u32 {
    let lanes = threads
        .max(1)
        .div_ceil(32)
        .saturating_mul(32)
        .saturating_mul(ctas.max(1));
    ((65_536 / lanes) / 8 * 8).min(256) as u32
}

/// `.reg .type name<N>, name2;`
fn reg_decl(p: &mut Parser, body: &mut Body) -> Result<()> {
    let mut bits = None;
    loop {
        let w = p.ident()?;
        if let Some(t) = w.strip_prefix('.').and_then(Ty::from_name) {
            bits = Some(t.bits());
            continue;
        }
        if w.starts_with(".v") {
            return Err(p.err("vector registers (.reg .vN) are not supported"));
        }
        let b = bits.ok_or_else(|| p.err(format!("register {w} has no type")))?;
        if p.eat('<') {
            let n = p.number()?;
            p.expect('>')?;
            for i in 0..n {
                body.declare(format!("{w}{i}"), b);
            }
        } else {
            body.declare(w, b);
        }
        if p.eat(';') {
            return Ok(());
        }
        p.expect(',')?;
    }
}

type Statement = (Option<(u32, bool)>, String, Vec<Raw>);

/// `{@{!}%p} opcode operand, ...;`
fn parse_statement(p: &mut Parser, body: &mut Body) -> Result<Statement> {
    let mut guard = None;
    if p.eat('@') {
        let neg = p.eat('!');
        let r = p.ident()?;
        let idx = body
            .lookup(&r)
            .ok_or_else(|| p.err(format!("unknown guard register {r}")))?;
        guard = Some((idx, neg));
    }
    let opcode = p.ident()?;
    let mut raws = Vec::new();
    if p.eat(';') {
        return Ok((guard, opcode, raws));
    }
    loop {
        raws.push(operand(p, body)?);
        if p.eat(';') {
            return Ok((guard, opcode, raws));
        }
        p.expect(',')?;
    }
}

fn sreg(name: &str) -> Option<Sreg> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (base, d) = name.split_once('.').unwrap_or((name, ""));
    Some(match base {
        "%tid" => Sreg::Tid(dim(d)?),
        "%ntid" => Sreg::Ntid(dim(d)?),
        "%ctaid" => Sreg::Ctaid(dim(d)?),
        "%nctaid" => Sreg::Nctaid(dim(d)?),
        "%laneid" if d.is_empty() => Sreg::Laneid,
        "%warpid" if d.is_empty() => Sreg::Warpid,
        "%nwarpid" if d.is_empty() => Sreg::Nwarpid,
        "WARP_SZ" if d.is_empty() => Sreg::WarpSize,
        _ => return None,
    })
}

fn number_literal(p: &Parser, s: &str, neg: bool) -> Result<Raw> {
    let bits = if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        u32::from_str_radix(h, 16).map(|v| v as u64).ok()
    } else if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.contains('.') || (s.contains(['e', 'E']) && !s.starts_with("0x")) {
        let v: f64 = s.parse().map_err(|_| p.err(format!("bad number {s}")))?;
        return Ok(Raw::FloatLit(if neg { -v } else { v }));
    } else {
        let v = parse_int(s).ok_or_else(|| p.err(format!("bad number {s}")))?;
        return Ok(Raw::Op(Operand::Imm(if neg {
            v.wrapping_neg()
        } else {
            v
        })));
    };
    let bits = bits.ok_or_else(|| p.err(format!("bad float literal {s}")))?;
    if neg {
        return Err(p.err(format!("negated hex float literal -{s}")));
    }
    Ok(Raw::Op(Operand::Imm(bits)))
}

fn operand(p: &mut Parser, body: &mut Body) -> Result<Raw> {
    match p.next()? {
        Tok::Punct('{') => {
            let mut v = Vec::new();
            loop {
                if let Some(Tok::Num(n)) = p.peek().cloned() {
                    p.pos += 1;
                    let value = parse_int(&n).ok_or_else(|| p.err(format!("bad number {n}")))?;
                    v.push(Some(body.const_reg(value)));
                    if p.eat('}') {
                        break;
                    }
                    p.expect(',')?;
                    continue;
                }
                let w = p.ident()?;
                if w == "_" {
                    v.push(None);
                } else {
                    v.push(Some(
                        body.lookup(&w)
                            .ok_or_else(|| p.err(format!("unknown register {w}")))?,
                    ));
                }
                if p.eat('}') {
                    break;
                }
                p.expect(',')?;
            }
            Ok(Raw::Op(Operand::Vec(v)))
        }
        Tok::Punct('[') => {
            let mut base = None;
            let mut disp: i64 = 0;
            match p.next()? {
                Tok::Ident(w) => {
                    if let Some(r) = body.lookup(&w) {
                        base = Some(r);
                    } else if let Some(&a) = body.shared.get(&w) {
                        disp = a as i64;
                    } else if let Some(&a) = body.params.get(&w) {
                        disp = a as i64;
                    } else if let Some(&a) = body.local.get(&w) {
                        disp = a as i64;
                    } else if let Some(&a) = body.globals.get(&w) {
                        disp = a as i64;
                    } else {
                        return Err(p.err(format!("unknown address base {w}")));
                    }
                }
                Tok::Num(s) => {
                    disp = parse_int(&s).ok_or_else(|| p.err(format!("bad address {s}")))? as i64
                }
                t => return Err(p.err(format!("bad address {t:?}"))),
            }
            if p.eat(',') {
                if !p.eat('{') {
                    return Err(p.err("expected {coordinates} after `[tensor-map,`"));
                }
                let mut coords = Vec::new();
                loop {
                    let w = p.ident()?;
                    coords.push(Some(
                        body.lookup(&w)
                            .ok_or_else(|| p.err(format!("unknown register {w}")))?,
                    ));
                    if p.eat('}') {
                        break;
                    }
                    p.expect(',')?;
                }
                p.expect(']')?;
                return Ok(Raw::Tensor(
                    Operand::Addr { base, disp },
                    Operand::Vec(coords),
                ));
            }
            while !p.eat(']') {
                let neg = if p.eat('+') {
                    p.eat('-')
                } else if p.eat('-') {
                    true
                } else {
                    return Err(p.err(format!("bad address offset {:?}", p.peek())));
                };
                let v = p.number()? as i64;
                disp += if neg { -v } else { v };
            }
            Ok(Raw::Op(Operand::Addr { base, disp }))
        }
        Tok::Punct('!') => {
            let w = p.ident()?;
            let r = body
                .lookup(&w)
                .ok_or_else(|| p.err(format!("unknown register {w}")))?;
            Ok(Raw::Op(Operand::NotReg(r)))
        }
        Tok::Punct('-') => match p.next()? {
            Tok::Num(s) => number_literal(p, &s, true),
            t => Err(p.err(format!("bad operand -{t:?}"))),
        },
        Tok::Num(s) => number_literal(p, &s, false),
        Tok::Ident(w) => {
            if let Some(r) = body.lookup(&w) {
                if p.eat('|') {
                    let q = p.ident()?;
                    let qi = body
                        .lookup(&q)
                        .ok_or_else(|| p.err(format!("unknown register {q}")))?;
                    return Ok(Raw::Pipe(r, qi));
                }
                return Ok(Raw::Op(Operand::Reg(r)));
            }
            if let Some(s) = sreg(&w) {
                return Ok(Raw::Op(match s {
                    Sreg::WarpSize => Operand::Imm(32),
                    s => Operand::Sreg(s),
                }));
            }
            if let Some(&a) = body.shared.get(&w) {
                return Ok(Raw::Op(Operand::Imm(a as u64)));
            }
            if let Some(&a) = body.params.get(&w) {
                return Ok(Raw::Op(Operand::Imm(a as u64)));
            }
            if let Some(&a) = body.local.get(&w) {
                return Ok(Raw::Op(Operand::Imm(a as u64)));
            }
            if let Some(&a) = body.globals.get(&w) {
                return Ok(Raw::Op(Operand::Imm(a)));
            }
            if w.starts_with('%') {
                return Err(p.err(format!("unknown register {w}")));
            }
            if w == "_" {
                return Ok(Raw::Op(Operand::Vec(vec![None])));
            }
            Ok(Raw::LabelName(w))
        }
        t => Err(p.err(format!("bad operand {t:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::launch_regs;

    #[test]
    fn launch_bounds_share_the_register_file_by_whole_warps() {
        // (threads per CTA, CTAs, registers per thread)
        let table = [
            (384, 1, 168), // 65,536 / 384 = 170.7, down to a multiple of 8
            (384, 2, 80),  // 768 threads: 85.3
            (128, 1, 256), // 512 would be more than a thread can hold
            (1024, 1, 64), // the largest CTA
            (100, 1, 256), // 4 warps
            (330, 1, 184), // 11 whole warps, 352 lanes: 186.2 (330 lanes would give 192)
            (0, 0, 256),   // degenerate bounds count as one warp
            (u64::MAX, u64::MAX, 0),
        ];
        for (threads, ctas, want) in table {
            assert_eq!(launch_regs(threads, ctas), want, "{threads} x {ctas}");
        }
    }
}
