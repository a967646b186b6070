//! Zig-zag varints as used inside Kafka records (protobuf-style, little-endian groups of 7 bits).

use crate::batch::BatchError;

/// Appends `v` as a zig-zag varint (i32 range, as Kafka's `writeVarint`).
pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_varlong(buf, v as i64)
}

/// Appends `v` as a zig-zag varlong.
pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

/// Size in bytes of `v` encoded as a zig-zag varlong.
pub fn varlong_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// Reads a zig-zag varlong at `*pos`, advancing it. At most 10 bytes are read.
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, BatchError> {
    let mut z: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(BatchError::Truncated("varint"))?;
        *pos += 1;
        z |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(BatchError::Malformed("varint longer than 10 bytes".into()));
        }
    }
    Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
}

/// Reads a zig-zag varint that must fit an i32.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, BatchError> {
    let v = get_varlong(buf, pos)?;
    i32::try_from(v).map_err(|_| BatchError::Malformed(format!("varint {v} out of i32 range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edge_values() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, -300, i32::MAX as i64, i32::MIN as i64, i64::MAX, i64::MIN] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            assert_eq!(get_varlong(&buf, &mut pos).unwrap(), v);
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn matches_kafka_encoding_of_small_values() {
        // Kafka's ByteUtils: writeVarint(-1) == 0x01, writeVarint(1) == 0x02, 300 -> d8 04.
        let mut buf = Vec::new();
        put_varint(&mut buf, -1);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, 300);
        assert_eq!(buf, vec![0x01, 0x02, 0xd8, 0x04]);
    }

    #[test]
    fn rejects_truncated_and_overlong_input() {
        let mut pos = 0;
        assert!(get_varlong(&[0x80], &mut pos).is_err());
        let mut pos = 0;
        assert!(get_varlong(&[0xff; 11], &mut pos).is_err());
    }
}
