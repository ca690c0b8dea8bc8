//! Reading and writing named tensors as `.safetensors` files (the exchange format of
//! `tarflow encode` / `decode`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

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
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| {
        Error::format(
            what.to_string(),
            format!("not a valid safetensors file ({e})"),
        )
    })?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(
            what.to_string(),
            format!("not a valid safetensors file ({e})"),
        )
    })?;
    let mut out = HashMap::new();
    for name in st.names() {
        let t = st
            .tensor(name)
            .map_err(|e| Error::format(what.to_string(), format!("tensor '{name}': {e}")))?;
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
        out.insert(name.clone(), Tensor::from_vec(data, t.shape())?);
    }
    Ok((out, metadata))
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
}
