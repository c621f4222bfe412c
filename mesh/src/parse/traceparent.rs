//! W3C Trace Context `traceparent` (`00-<trace-id>-<parent-id>-<flags>`), which HBONE carries
//! so a trace spans the tunnel. Untrusted input: validated strictly, `std` only.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("traceparent must be `vv-<32 hex>-<16 hex>-<2 hex>` in lower-case hex")]
    Shape,
    #[error("traceparent version ff is forbidden by W3C Trace Context")]
    Version,
    #[error("traceparent trace-id or parent-id is all zeros, which W3C Trace Context forbids")]
    ZeroId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    pub version: u8,
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl Traceparent {
    pub fn parse(s: &str) -> Result<Self, TraceparentError> {
        let mut parts = s.split('-');
        let version = hex_field(parts.next(), 2)?;
        if version == 0xff {
            return Err(TraceparentError::Version);
        }
        let trace_id = hex_field(parts.next(), 32)?;
        let parent_id = hex_field(parts.next(), 16)?;
        let flags = hex_field(parts.next(), 2)?;
        // Version 00 has exactly four fields; later versions may append more.
        if version == 0 && parts.next().is_some() {
            return Err(TraceparentError::Shape);
        }
        if trace_id == 0 || parent_id == 0 {
            return Err(TraceparentError::ZeroId);
        }
        Ok(Self { version: version as u8, trace_id, parent_id: parent_id as u64, flags: flags as u8 })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn hex_field(part: Option<&str>, len: usize) -> Result<u128, TraceparentError> {
    let p = part.ok_or(TraceparentError::Shape)?;
    if p.len() != len || !p.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(TraceparentError::Shape);
    }
    u128::from_str_radix(p, 16).map_err(|_| TraceparentError::Shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let t = Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(t.parent_id, 0x00f067aa0ba902b7);
        assert!(t.sampled());
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(Traceparent::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
