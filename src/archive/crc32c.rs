//! CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), streaming, with the encoding the
//! acknowledgement uses: the 4 big-endian bytes in standard base64.

/// The lookup table, built at compile time.
const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// A running CRC-32C.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(0xFFFF_FFFF)
    }
}

impl Crc32c {
    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for b in bytes {
            c = TABLE[((c ^ u32::from(*b)) & 0xFF) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The checksum of everything added.
    pub fn value(&self) -> u32 {
        !self.0
    }

    /// The checksum as the acknowledgement carries it.
    pub fn base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(self.value().to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(b: &[u8]) -> Crc32c {
        let mut c = Crc32c::default();
        c.update(b);
        c
    }

    #[test]
    fn known_vectors() {
        assert_eq!(of(b"123456789").value(), 0xE306_9283);
        assert_eq!(of(b"").value(), 0);
        assert_eq!(of(&[0u8; 32]).value(), 0x8A91_36AA);
        assert_eq!(of(&[0xFFu8; 32]).value(), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(of(&inc).value(), 0x46DD_794E);
        assert_eq!(of(b"123456789").base64(), "4waSgw==");
    }

    #[test]
    fn streaming_equals_one_shot() {
        let text = b"The quick brown fox jumps over the lazy dog";
        let mut c = Crc32c::default();
        for part in text.chunks(5) {
            c.update(part);
        }
        assert_eq!(c.value(), of(text).value());
        assert_eq!(c.value(), 0x2262_0404);
    }
}
