//! Reading and writing named tensors as `.safetensors` files (the exchange format of
//! `tarflow encode` / `decode`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors, TensorInfo, TensorView};

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, read_file};
use crate::tensor::{DType, Element, Tensor};

/// Reads every tensor of a safetensors file, converted to `E` (F16, BF16, F32, F64 and the
/// integer types are accepted).
pub fn read_tensors<E: Element>(path: &Path) -> Result<HashMap<String, Tensor<E>>> {
    let bytes = read_file(path)?;
    parse_tensors(&bytes, &path.display().to_string())
}

/// Parses safetensors bytes; `what` names the source in errors.
pub fn parse_tensors<E: Element>(bytes: &[u8], what: &str) -> Result<HashMap<String, Tensor<E>>> {
    parse_tensors_with_metadata(bytes, what).map(|(t, _)| t)
}

/// Tensors by name, and the file's metadata map.
pub type TensorsWithMetadata<E> = (HashMap<String, Tensor<E>>, HashMap<String, String>);

/// Parses safetensors bytes into tensors and the file's metadata map.
pub fn parse_tensors_with_metadata<E: Element>(
    bytes: &[u8],
    what: &str,
) -> Result<TensorsWithMetadata<E>> {
    let invalid = |e: SafeTensorError| {
        Error::format(
            what.to_string(),
            format!("not a valid safetensors file: {}", describe(&e, bytes)),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    let mut out = HashMap::new();
    for name in st.names() {
        let t = st
            .tensor(name)
            .map_err(|e| Error::format(what.to_string(), format!("tensor '{name}': {e}")))?;
        // Element counts were checked by safetensors, but a zero-sized tensor can still carry
        // other dimensions whose strides overflow.
        let shape = t.shape();
        if shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
            .filter(|&n| n <= isize::MAX as usize)
            .is_none()
        {
            return Err(Error::format(
                what.to_string(),
                format!("tensor '{name}' has shape {shape:?}, too large to index"),
            ));
        }
        let raw = t.data();
        let vals: Vec<f64> = match t.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            Dtype::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
            other => {
                return Err(Error::format(
                    what.to_string(),
                    format!("tensor '{name}' has unsupported dtype {other:?}"),
                ))
            }
        };
        let data = vals.into_iter().map(E::from_f64).collect();
        let tensor = Tensor::from_vec(data, shape)
            .map_err(|e| Error::format(what.to_string(), format!("tensor '{name}': {e}")))?;
        out.insert(name.clone(), tensor);
    }
    Ok((out, metadata))
}

/// What is wrong, in words: the safetensors crate's own messages are bare variant names.
fn describe(e: &SafeTensorError, bytes: &[u8]) -> String {
    let declared = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let declared = declared.unwrap_or(0);
    match e {
        SafeTensorError::HeaderTooSmall => format!(
            "{} byte(s), too short for the 8-byte header length",
            bytes.len()
        ),
        SafeTensorError::HeaderTooLarge => {
            format!("declared header length {declared} exceeds the 100 MB limit")
        }
        SafeTensorError::InvalidHeaderLength => format!(
            "declared header length {declared} runs past the end of the {}-byte file",
            bytes.len()
        ),
        SafeTensorError::InvalidHeader => "the header is not UTF-8 text".into(),
        SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not a JSON map of tensor entries (dtype, shape, data_offsets)".into()
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor '{name}': its data_offsets do not start where the previous tensor's end"
        ),
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MetadataIncompleteBuffer => {
            offending_tensor(bytes).unwrap_or_else(|| {
                let data = (bytes.len() as u64).saturating_sub(declared.saturating_add(8));
                format!("the tensors' data_offsets do not cover the {data} data bytes exactly")
            })
        }
        other => other.to_string(),
    }
}

/// Names the first tensor (in data order) whose header entry disagrees with itself or with
/// the file size, for the errors that safetensors reports without a name.
fn offending_tensor(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..n.checked_add(8)?)?;
    let data_len = bytes.len() - 8 - n;
    // Parsed as safetensors itself parses it (which succeeded), without its validation.
    let meta: Metadata = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(String, &TensorInfo)> = meta.tensors().into_iter().collect();
    entries.sort_by_key(|(_, info)| info.data_offsets);
    for (name, info) in entries {
        let (dtype, shape, (s, e)) = (info.dtype, &info.shape, info.data_offsets);
        let nbytes = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|c| c.checked_mul(dtype.size()));
        let Some(nbytes) = nbytes else {
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype:?} has too many bytes to index"
            ));
        };
        if e < s || e - s != nbytes {
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype:?} needs {nbytes} bytes, \
                 its data_offsets [{s}, {e}] do not span that"
            ));
        }
        if e > data_len {
            return Some(format!(
                "tensor '{name}': data_offsets [{s}, {e}] run past the {data_len} data bytes \
                 (truncated file?)"
            ));
        }
    }
    None
}

/// Writes named tensors (stored as `dtype`) atomically.
pub fn write_tensors<E: Element>(
    path: &Path,
    tensors: &[(&str, &Tensor<E>)],
    dtype: DType,
) -> Result<()> {
    atomic_write(path, &tensors_to_bytes(tensors, dtype, None)?)
}

/// Serialises named tensors (stored as `dtype`) with an optional metadata map.
pub fn tensors_to_bytes<E: Element>(
    tensors: &[(&str, &Tensor<E>)],
    dtype: DType,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    for (n, _) in tensors {
        if !seen.insert(*n) || *n == "__metadata__" {
            return Err(Error::arg(
                "tensors_to_bytes",
                format!(
                    "tensor name '{n}' is {}",
                    if *n == "__metadata__" {
                        "reserved for the metadata"
                    } else {
                        "used more than once"
                    }
                ),
            ));
        }
    }
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes = match dtype {
                DType::F32 => {
                    let v: Vec<f32> = t.to_vec().iter().map(|x| x.to_f32()).collect();
                    bytemuck::cast_slice(&v).to_vec()
                }
                DType::F64 => {
                    let v: Vec<f64> = t.to_f64_vec();
                    bytemuck::cast_slice(&v).to_vec()
                }
            };
            (n.to_string(), t.shape().to_vec(), bytes)
        })
        .collect();
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    };
    let views = bufs
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(st_dtype, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format(n.clone(), e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &metadata)
        .map_err(|e| Error::format("safetensors", e.to_string()))
        .and_then(with_sorted_header)
}

/// `bytes` (a serialised safetensors file) with its JSON header's keys in sorted order, so
/// that the same tensors and metadata always give the same file. The `safetensors` crate
/// writes the metadata from a hash map, in an order that changes from process to process.
/// Offsets in the header count from the end of the header, so the data is left as it is.
fn with_sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    use std::collections::BTreeMap;
    let bad = |m: &str| Error::format("safetensors", format!("serialised header {m}"));
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_le_bytes(b) as usize)
        .ok_or_else(|| bad("missing"))?;
    let end = 8usize.checked_add(n).filter(|&e| e <= bytes.len());
    let end = end.ok_or_else(|| bad("longer than the file"))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&e.to_string()))?;
    // The metadata's own keys too (a BTreeMap sorts whatever serde_json's map type does).
    let header: BTreeMap<String, serde_json::Value> = header
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::Object(m) if k == "__metadata__" => {
                let sorted: BTreeMap<String, serde_json::Value> = m.into_iter().collect();
                serde_json::to_value(sorted).map(|v| (k, v))
            }
            v => Ok((k, v)),
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(&e.to_string()))?;
    let mut json = serde_json::to_string(&header).map_err(|e| bad(&e.to_string()))?;
    // Padded with spaces to a multiple of 8 bytes, as the crate pads it, so that the data
    // stays aligned.
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    /// The header's keys come out sorted, the metadata's included, whatever order the hash
    /// maps hold them in; the file reads back to the same tensors and metadata.
    #[test]
    fn serialised_headers_are_sorted_and_read_back() {
        let a = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap();
        let b = Tensor::<f32>::from_vec(vec![4.0, 5.0], &[1, 2]).unwrap();
        let keys = [
            "zeta", "alpha", "mu", "beta", "omega", "kappa", "delta", "sigma",
        ];
        let meta: HashMap<String, String> = keys
            .iter()
            .map(|k| (k.to_string(), format!("value of {k}")))
            .collect();
        let bytes = tensors_to_bytes(&[("w", &b), ("a", &a)], DType::F32, Some(meta)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "header padded to 8 bytes");
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let at = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
        let mut sorted = keys.to_vec();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(at(w[0]) < at(w[1]), "{} before {} in {header}", w[0], w[1]);
        }
        assert!(
            at("__metadata__") < at("a") && at("a") < at("w"),
            "{header}"
        );
        let (t, m) = parse_tensors_with_metadata::<f32>(&bytes, "test").unwrap();
        assert_eq!(t["a"].to_vec(), vec![1.0, 2.0, 3.0]);
        assert_eq!(t["w"].shape(), &[1, 2]);
        assert_eq!(t["w"].to_vec(), vec![4.0, 5.0]);
        assert_eq!(m["kappa"], "value of kappa");
        assert_eq!(m.len(), keys.len());
    }

    /// A zero-sized tensor passes the element-count check whatever its other dimensions,
    /// whose strides then overflowed while the tensor was built.
    #[test]
    fn empty_tensor_with_huge_dimensions_is_an_error() {
        let h =
            r#"{"t":{"dtype":"F32","shape":[0,1099511627776,1099511627776],"data_offsets":[0,0]}}"#;
        let e = parse_tensors::<f32>(&raw(h, &[]), "x.safetensors")
            .expect_err("rejected")
            .to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("'t'") && e.contains("too large"),
            "{e}"
        );
        // Small empty tensors are fine.
        let h = r#"{"t":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#;
        let t = parse_tensors::<f32>(&raw(h, &[]), "x").unwrap();
        assert_eq!(t["t"].shape(), &[0, 3]);
    }

    /// Structural errors say what is wrong and, where one is at fault, name the tensor.
    #[test]
    fn structural_errors_are_described() {
        let err = |b: &[u8]| {
            parse_tensors::<f32>(b, "x.safetensors")
                .expect_err("rejected")
                .to_string()
        };
        let cases: [(Vec<u8>, &str); 7] = [
            (vec![1, 2, 3], "3 byte(s), too short"),
            (
                u64::MAX.to_le_bytes().to_vec(),
                "declared header length 18446744073709551615 exceeds the 100 MB limit",
            ),
            (
                vec![16, 0, 0, 0, 0, 0, 0, 0, b'{'],
                "declared header length 16 runs past the end of the 9-byte file",
            ),
            (raw("[1, 2]", &[]), "not a JSON map"),
            (
                raw(
                    r#"{"t":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#,
                    &[0; 16],
                ),
                "tensor 't': data_offsets [0, 4000] run past the 16 data bytes",
            ),
            (
                raw(
                    r#"{"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}}"#,
                    &[0; 16],
                ),
                "tensor 't': shape [4611686018427387904] of F32 has too many bytes",
            ),
            (
                raw(
                    r#"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#,
                    &[0; 16],
                ),
                "tensor 't': shape [3] of F32 needs 12 bytes",
            ),
        ];
        for (bytes, want) in cases {
            let e = err(&bytes);
            assert!(e.starts_with("x.safetensors: ") && e.contains(want), "{e}");
        }
    }
}
