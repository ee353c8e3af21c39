//! Reading the ONNX protobuf: the `onnx-protobuf` crate's generated types (rust-protobuf;
//! unknown fields skipped, proto2's unpacked and proto3's packed repeated fields both read),
//! and the few helpers the native engine needs on top.

pub use onnx_protobuf::{
    type_proto, AttributeProto as Attribute, GraphProto, Message, ModelProto, NodeProto,
    TensorProto,
};

/// `TensorProto.DataType.FLOAT`.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType.UINT8`.
pub const UINT8: i32 = 2;

/// A tensor element type's name, for a refusal's reason.
pub fn type_name(data_type: i32) -> String {
    match data_type {
        FLOAT => "float32".into(),
        UINT8 => "uint8".into(),
        10 => "float16".into(),
        11 => "double".into(),
        other => format!("element type {other}"),
    }
}

/// A tensor's uint8 values, from `int32_data` (one per element, as protobuf stores them) or
/// `raw_data`; `None` for other types, values beyond a byte, and data kept in another file.
pub fn u8s(t: &TensorProto) -> Option<Vec<u8>> {
    if t.data_type != UINT8 || t.data_location.value() != 0 {
        return None;
    }
    if !t.raw_data.is_empty() {
        return Some(t.raw_data.clone());
    }
    t.int32_data.iter().map(|&v| u8::try_from(v).ok()).collect()
}

/// A tensor's float32 values, from `float_data` or little-endian `raw_data`; `None` for other
/// types and for data kept in another file.
pub fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT || t.data_location.value() != 0 {
        return None;
    }
    if !t.raw_data.is_empty() {
        let chunks = t.raw_data.chunks_exact(4);
        if !chunks.remainder().is_empty() {
            return None;
        }
        return chunks
            .map(|c| <[u8; 4]>::try_from(c).ok().map(f32::from_le_bytes))
            .collect();
    }
    Some(t.float_data.clone())
}

/// The graph input's element type and dimensions (0 for a symbolic one, such as the batch).
pub fn tensor_dims(v: &onnx_protobuf::ValueInfoProto) -> Option<(i32, Vec<i64>)> {
    let t = v.type_.as_ref()?;
    match &t.value {
        Some(type_proto::Value::TensorType(t)) => Some((
            t.elem_type,
            t.shape
                .as_ref()
                .map(|s| s.dim.iter().map(|d| d.dim_value()).collect())
                .unwrap_or_default(),
        )),
        _ => None,
    }
}
