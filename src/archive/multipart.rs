//! `multipart/form-data` framing for a POST upload (pure): the target's fields in key order,
//! then the file part `file` (`worker-logs.ndjson`) last. The object itself is streamed
//! between `head` and `tail`, never held here.

use std::collections::BTreeMap;

/// The file part's field name and filename.
pub const FILE_FIELD: &str = "file";
pub const FILE_NAME: &str = "worker-logs.ndjson";

/// The bytes around the object, and the body's content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub content_type: String,
    /// Every field, then the file part's header.
    pub head: Vec<u8>,
    /// The closing delimiter.
    pub tail: Vec<u8>,
}

impl Frame {
    /// Length of the whole body around an object of `object` bytes.
    pub fn body_len(&self, object: u64) -> u64 {
        self.head.len() as u64 + object + self.tail.len() as u64
    }
}

/// A quoted-string-safe name (control characters were refused by validation).
fn quoted(name: &str) -> String {
    name.replace('"', "%22")
}

/// The framing for `fields` with `boundary` (which must not occur in any value or the object:
/// callers use a random one).
pub fn frame(fields: &BTreeMap<String, String>, boundary: &str) -> Frame {
    let mut head = Vec::new();
    for (k, v) in fields {
        head.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n",
                quoted(k)
            )
            .as_bytes(),
        );
        head.extend_from_slice(v.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{FILE_FIELD}\"; filename=\"{FILE_NAME}\"\r\nContent-Type: application/x-ndjson\r\n\r\n"
        )
        .as_bytes(),
    );
    Frame {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        head,
        tail: format!("\r\n--{boundary}--\r\n").into_bytes(),
    }
}

/// A boundary no object or field will contain by chance.
pub fn random_boundary() -> String {
    format!("berth-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_key_order_then_the_file_part_last() {
        let fields: BTreeMap<String, String> = [
            ("policy".to_string(), "p".to_string()),
            ("key".to_string(), "k/1".to_string()),
        ]
        .into();
        let f = frame(&fields, "B");
        let body = [f.head.as_slice(), b"{}\n", f.tail.as_slice()].concat();
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            "--B\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nk/1\r\n\
             --B\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\np\r\n\
             --B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"worker-logs.ndjson\"\r\nContent-Type: application/x-ndjson\r\n\r\n\
             {}\n\r\n--B--\r\n"
        );
        assert_eq!(f.body_len(3), body.len() as u64);
        assert_eq!(f.content_type, "multipart/form-data; boundary=B");
    }

    #[test]
    fn quotes_in_names_cannot_break_the_header() {
        let fields: BTreeMap<String, String> = [("a\"b".to_string(), "v".to_string())].into();
        let f = frame(&fields, "B");
        assert!(
            String::from_utf8(f.head)
                .unwrap()
                .contains("name=\"a%22b\"")
        );
        assert_ne!(random_boundary(), random_boundary());
    }
}
