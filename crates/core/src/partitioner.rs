//! Choosing a partition for a record exactly as Kafka's default partitioner does: murmur2 of
//! the key for keyed records, sticky batches for records without a key.

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions.max(1)
}

/// Records without a key stick to one partition until `batch_bytes` have gone to it, then
/// move to another (Kafka's KIP-480 sticky partitioner): full batches, spread over time.
#[derive(Debug)]
pub struct StickyPartitioner {
    current: Option<u32>,
    filled: usize,
    batch_bytes: usize,
    state: u64,
}

impl StickyPartitioner {
    pub fn new(batch_bytes: usize, seed: u64) -> Self {
        Self { current: None, filled: 0, batch_bytes: batch_bytes.max(1), state: seed | 1 }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough to spread partitions, no dependency needed.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The partition for a keyless record of `size` bytes.
    pub fn next(&mut self, partitions: u32, size: usize) -> u32 {
        let partitions = partitions.max(1);
        let current = match self.current {
            Some(p) if p < partitions && self.filled < self.batch_bytes => p,
            previous => {
                let mut p = (self.next_random() % partitions as u64) as u32;
                if partitions > 1 && Some(p) == previous {
                    p = (p + 1) % partitions;
                }
                self.filled = 0;
                p
            }
        };
        self.current = Some(current);
        self.filled += size;
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k), want, "{}", String::from_utf8_lossy(k));
        }
    }

    #[test]
    fn keys_map_to_kafka_partitions() {
        // toPositive(murmur2("21")) % 6 == (-973932308 & 0x7fffffff) % 6
        assert_eq!(partition_for_key(b"21", 6), ((-973_932_308i32 & 0x7fff_ffff) as u32) % 6);
        assert_eq!(partition_for_key(b"abc", 8), 479_470_107 % 8);
    }

    #[test]
    fn sticky_fills_a_batch_then_moves() {
        let mut s = StickyPartitioner::new(100, 42);
        let first = s.next(4, 60);
        assert_eq!(s.next(4, 30), first);
        assert_eq!(s.next(4, 15), first);
        assert_ne!(s.next(4, 10), first, "a full batch (105 of 100 bytes) moves on");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(s.next(4, 100));
        }
        assert_eq!(seen.len(), 4);
    }
}
