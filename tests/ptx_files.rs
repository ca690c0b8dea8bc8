//! The committed PTX matches its CUDA C sources, without nvcc: every `ptx/NAME.cu` has a
//! `ptx/NAME.ptx` whose header names the pinned nvcc and the SHA-256 of the current source
//! (so a source edited without regenerating its PTX fails here, in plain `cargo test`), and
//! the PTX is what the drivers expect: ISA 9.0 for sm_80, no debug lines, no paths of the
//! machine that compiled it, no calls or local memory. `scripts/ptx.sh check` (in CI, with
//! nvcc) proves the rest: that the PTX is exactly what the source compiles to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const NVCC_VERSION: &str = "V13.0.88";

fn ptx_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ptx")
}

fn files_with(ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(ptx_dir())
        .expect("ptx/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// SHA-256 (FIPS 180-4), enough for hashing a few source files in a test.
fn sha256(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(word.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn sha256_matches_the_standard_test_vectors() {
    assert_eq!(
        sha256(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // Two blocks (56 bytes of message leave no room for the length in the first).
    assert_eq!(
        sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

/// The local headers `ptx/{name}.cu` includes (`#include "FILE"` lines), in order.
fn local_includes(cu: &str) -> Vec<String> {
    cu.lines()
        .filter_map(|l| l.strip_prefix("#include \""))
        .filter_map(|l| l.strip_suffix('"'))
        .map(str::to_string)
        .collect()
}

/// What scripts/ptx.sh hashes for a source: the .cu's bytes, then each local header's, in
/// include order.
fn source_bytes(name: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(ptx_dir().join(format!("{name}.cu"))).unwrap();
    let text = String::from_utf8(bytes.clone()).expect("ptx sources are UTF-8");
    for h in local_includes(&text) {
        let header = std::fs::read(ptx_dir().join(&h))
            .unwrap_or_else(|e| panic!("ptx/{name}.cu includes \"{h}\": {e}"));
        bytes.extend(header);
    }
    bytes
}

#[test]
fn local_headers_are_one_level_deep_and_each_is_included() {
    let headers = files_with("cuh");
    let mut used = BTreeSet::new();
    for name in files_with("cu") {
        let cu = std::fs::read_to_string(ptx_dir().join(format!("{name}.cu"))).unwrap();
        used.extend(local_includes(&cu));
    }
    for h in &headers {
        let text = std::fs::read_to_string(ptx_dir().join(format!("{h}.cuh"))).unwrap();
        assert!(
            local_includes(&text).is_empty(),
            "ptx/{h}.cuh includes a local header (scripts/ptx.sh hashes one level)"
        );
        assert!(
            used.contains(&format!("{h}.cuh")),
            "ptx/{h}.cuh is included by no ptx/*.cu"
        );
    }
}

#[test]
fn every_source_has_its_ptx_and_every_ptx_its_source() {
    let (cu, ptx) = (files_with("cu"), files_with("ptx"));
    assert!(!cu.is_empty(), "no ptx/*.cu");
    assert_eq!(
        cu, ptx,
        "ptx/*.cu and ptx/*.ptx differ (run scripts/ptx.sh regen, or remove the orphan)"
    );
}

/// The value of the header line `// KEY: value` in the first lines of a PTX file.
fn header(ptx: &str, key: &str) -> Option<String> {
    let prefix = format!("// {key}: ");
    ptx.lines()
        .take(3)
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

/// The virtual architecture a source is compiled for: `compute_80`, or the one its first
/// line names (`// ptx-arch: compute_90a` for the wgmma kernels), as scripts/ptx.sh reads it.
fn source_arch(name: &str) -> String {
    let cu = std::fs::read_to_string(ptx_dir().join(format!("{name}.cu"))).unwrap();
    cu.lines()
        .next()
        .and_then(|l| l.strip_prefix("// ptx-arch: "))
        .unwrap_or("compute_80")
        .to_string()
}

#[test]
fn every_ptx_header_names_the_pinned_nvcc_and_its_sources_current_hash() {
    for name in files_with("cu") {
        let cu = source_bytes(&name);
        let ptx = std::fs::read_to_string(ptx_dir().join(format!("{name}.ptx")))
            .unwrap_or_else(|e| panic!("ptx/{name}.ptx: {e}"));
        assert!(
            ptx.starts_with(&format!(
                "// Generated by scripts/ptx.sh from ptx/{name}.cu"
            )),
            "ptx/{name}.ptx does not start with the generator's header"
        );
        let nvcc = header(&ptx, "nvcc").unwrap_or_else(|| panic!("ptx/{name}.ptx: no nvcc line"));
        assert!(
            nvcc.starts_with(&format!("{NVCC_VERSION} ")),
            "ptx/{name}.ptx was compiled by nvcc {nvcc}, not {NVCC_VERSION}"
        );
        let arch = source_arch(&name);
        assert!(
            nvcc.contains(&format!("-arch={arch} ")) && nvcc.contains("-O3"),
            "ptx/{name}.ptx flags: {nvcc} (the source asks for {arch})"
        );
        assert!(
            ptx.contains(&format!(
                "// Cuda compilation tools, release 13.0, {NVCC_VERSION}"
            )),
            "ptx/{name}.ptx: nvcc's own banner names another version"
        );
        let hash =
            header(&ptx, "source-sha256").unwrap_or_else(|| panic!("ptx/{name}.ptx: no hash"));
        assert_eq!(
            hash,
            sha256(&cu),
            "ptx/{name}.cu or a header it includes changed since ptx/{name}.ptx was generated \
             (scripts/ptx.sh regen)"
        );
    }
}

#[test]
fn every_ptx_targets_isa_9_0_for_sm_80_without_debug_info_paths_calls_or_local_memory() {
    for name in files_with("ptx") {
        let ptx = std::fs::read_to_string(ptx_dir().join(format!("{name}.ptx"))).unwrap();
        // sm_80, or sm_90a for a source that asks for compute_90a.
        let target = format!(".target {}", source_arch(&name).replace("compute_", "sm_"));
        let directives: Vec<&str> = ptx
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.is_empty())
            .take(3)
            .collect();
        assert_eq!(
            directives,
            [".version 9.0", target.as_str(), ".address_size 64"],
            "ptx/{name}.ptx"
        );
        for (i, line) in ptx.lines().enumerate() {
            let code = line.split("//").next().unwrap().trim();
            let words: Vec<&str> = code.split_whitespace().collect();
            let bad = code.starts_with(".loc")
                || code.starts_with(".file")
                || code.starts_with(".local")
                || words
                    .iter()
                    .any(|w| w.contains(".local") || w.starts_with("call"))
                || words
                    .iter()
                    .any(|w| w.starts_with("printf") || w.starts_with("vprintf"));
            assert!(!bad, "ptx/{name}.ptx line {}: {line}", i + 1);
            // An absolute path anywhere, comments included (e.g. from -lineinfo or -G).
            for marker in ["/home/", "/work/", "/tmp/", "/usr/", "/root/", ":\\"] {
                assert!(
                    !line.contains(marker),
                    "ptx/{name}.ptx line {} holds a path: {line}",
                    i + 1
                );
            }
        }
    }
}
