//! How keys and values become bytes and back: a type's [`Codec`]. Serdes are chosen by type,
//! not passed around: `builder.stream::<String, Json<Order>>("orders")` reads UTF-8 keys and
//! JSON values. Another encoding of a type is a newtype with its own `Codec`.
//!
//! Integers are big-endian, as Kafka's serializers write them (so Java applications read the
//! same topics). A record's absent key or value (Kafka's null) decodes only into a type that
//! has a null form ([`Option`], `()`); anywhere else the record is skipped and counted.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

/// A type's wire form.
pub trait Codec: Sized {
    /// The encoded form of `self`; `None` for the null form (an absent key or value).
    fn encode(&self) -> Option<Bytes>;
    /// Decodes present bytes.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
    /// Decodes bytes as read from a topic (`Bytes` keeps them without a copy).
    fn decode_owned(bytes: Bytes) -> Result<Self, CodecError> {
        Self::decode(&bytes)
    }
    /// The value of an absent key or value, for types that have one.
    fn null() -> Option<Self> {
        None
    }
    /// Whether this is the null form.
    fn is_null(&self) -> bool {
        false
    }
    /// Decodes a key or value as read: absent is `null()`.
    fn decode_opt(bytes: Option<&[u8]>) -> Result<Self, CodecError> {
        match bytes {
            Some(b) => Self::decode(b),
            None => Self::null().ok_or_else(|| CodecError("null where a value is required".into())),
        }
    }
    /// [`Codec::decode_opt`] of owned bytes.
    fn decode_opt_owned(bytes: Option<Bytes>) -> Result<Self, CodecError> {
        match bytes {
            Some(b) => Self::decode_owned(b),
            None => Self::null().ok_or_else(|| CodecError("null where a value is required".into())),
        }
    }
}

impl Codec for String {
    fn encode(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self.as_bytes()))
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        std::str::from_utf8(bytes).map(str::to_string).map_err(|e| CodecError(format!("not UTF-8: {e}")))
    }
}

impl Codec for Vec<u8> {
    fn encode(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(self))
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// Kept as read and written as is: no copy.
impl Codec for Bytes {
    fn encode(&self) -> Option<Bytes> {
        Some(self.clone())
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
    fn decode_owned(bytes: Bytes) -> Result<Self, CodecError> {
        Ok(bytes)
    }
}

macro_rules! big_endian {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self) -> Option<Bytes> {
                Some(Bytes::copy_from_slice(&self.to_be_bytes()))
            }
            fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
                let arr = bytes.try_into().map_err(|_| {
                    CodecError(format!("{} takes {} bytes, not {}", stringify!($t), size_of::<$t>(), bytes.len()))
                })?;
                Ok(<$t>::from_be_bytes(arr))
            }
        }
    )*};
}
big_endian!(i16, i32, i64, u16, u32, u64, f32, f64);

/// Always absent: keys of keyless streams.
impl Codec for () {
    fn encode(&self) -> Option<Bytes> {
        None
    }
    fn decode(_: &[u8]) -> Result<Self, CodecError> {
        Ok(())
    }
    fn null() -> Option<Self> {
        Some(())
    }
    fn is_null(&self) -> bool {
        true
    }
}

/// `None` is the absent form (a null key, a tombstone value).
impl<T: Codec> Codec for Option<T> {
    fn encode(&self) -> Option<Bytes> {
        self.as_ref().and_then(T::encode)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        T::decode(bytes).map(Some)
    }
    fn decode_owned(bytes: Bytes) -> Result<Self, CodecError> {
        T::decode_owned(bytes).map(Some)
    }
    fn null() -> Option<Self> {
        Some(None)
    }
    fn is_null(&self) -> bool {
        self.as_ref().is_none_or(T::is_null)
    }
}

/// Any serde type as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize + DeserializeOwned> Codec for Json<T> {
    fn encode(&self) -> Option<Bytes> {
        // Serializing a value in memory fails only for maps with non-string keys.
        Some(Bytes::from(
            serde_json::to_vec(&self.0).unwrap_or_else(|e| format!("\"unserializable: {e}\"").into_bytes()),
        ))
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map(Json).map_err(|e| CodecError(format!("not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_nulls() {
        assert_eq!(i64::decode(&42i64.encode().unwrap()), Ok(42));
        assert_eq!(&42i64.encode().unwrap()[..], &[0, 0, 0, 0, 0, 0, 0, 42], "big-endian as Kafka's LongSerializer");
        assert!(i64::decode(&[1, 2]).unwrap_err().0.contains("8 bytes, not 2"));
        assert_eq!(String::decode_opt(Some(b"word")), Ok("word".to_string()));
        assert!(String::decode_opt(None).is_err());
        assert_eq!(Option::<String>::decode_opt(None), Ok(None));
        assert_eq!(Option::<i64>::None.encode(), None);
        assert_eq!(<()>::decode_opt(None), Ok(()));
        assert!(Some(()).is_null() && None::<String>.is_null() && !Some(1i64).is_null());
        let b = Bytes::from_static(b"kept");
        assert_eq!(Bytes::decode_owned(b.clone()).unwrap().as_ptr(), b.as_ptr(), "no copy");
        let j = Json(serde_json::json!({"a": 1}));
        assert_eq!(Json::<serde_json::Value>::decode(&j.encode().unwrap()), Ok(j));
        assert!(Json::<u32>::decode(b"\"x\"").is_err());
    }
}
