//! containerd's runtime options: where the shim finds `ConfigPath`.
//!
//! containerd hands the runtime options (`runtimeoptions.v1.Options` for
//! non-runc runtimes: `ctr run --runtime-config-path`, CRI's
//! `[...runtimes.husk-runc.options] ConfigPath`) as a protobuf `Any` on the
//! stdin of `shim start`, and on Create when the client sets task options.
//! The message is tiny (`type_url = 1`, `config_path = 2`), so it is decoded
//! here by hand instead of generating code for it.

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::{well_known_types::any::Any, CodedInputStream, Message};

/// Errors decoding runtime options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("invalid runtime options: {0}")]
    Decode(#[from] containerd_shim::protos::protobuf::Error),
    #[error("invalid runtime options: bad protobuf tag {0:#x}")]
    WireType(u32),
}

/// The `config_path` carried by an `Any` holding `runtimeoptions.v1.Options`;
/// `None` for other option types (e.g. runc's) or an empty path.
pub fn config_path_from_any(any: &Any) -> Result<Option<String>, OptionsError> {
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            // field 2, wire type 2 (length-delimited): config_path
            0x12 => path = input.read_string()?,
            _ => {
                let wire_type = WireType::new(tag & 7).ok_or(OptionsError::WireType(tag))?;
                input.skip_field(wire_type)?
            }
        }
    }
    Ok((!path.is_empty()).then_some(path))
}

/// Same, for the serialized `Any` that containerd writes to `shim start`'s stdin.
pub fn config_path_from_bytes(data: &[u8]) -> Result<Option<String>, OptionsError> {
    if data.is_empty() {
        return Ok(None);
    }
    let any = Any::parse_from_bytes(data)?;
    config_path_from_any(&any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options_any(type_url: &str, config_path: &str) -> Any {
        // runtimeoptions.v1.Options { type_url = 1, config_path = 2 }
        let mut value = vec![0x0a, 3, b'a', b'b', b'c', 0x12, config_path.len() as u8];
        value.extend_from_slice(config_path.as_bytes());
        Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_config_path() {
        let any = options_any("runtimeoptions.v1.Options", "/etc/x/husk.toml");
        assert_eq!(
            config_path_from_any(&any).unwrap().as_deref(),
            Some("/etc/x/husk.toml")
        );
        let prefixed = options_any("type.googleapis.com/runtimeoptions.v1.Options", "/a");
        assert_eq!(
            config_path_from_any(&prefixed).unwrap().as_deref(),
            Some("/a")
        );
    }

    #[test]
    fn decodes_from_serialized_any() {
        let any = options_any("runtimeoptions.v1.Options", "/h.toml");
        let bytes = any.write_to_bytes().unwrap();
        assert_eq!(
            config_path_from_bytes(&bytes).unwrap().as_deref(),
            Some("/h.toml")
        );
        assert_eq!(config_path_from_bytes(&[]).unwrap(), None);
    }

    #[test]
    fn other_option_types_carry_no_path() {
        let any = options_any("containerd.runc.v1.Options", "/x");
        assert_eq!(config_path_from_any(&any).unwrap(), None);
        let empty = options_any("runtimeoptions.v1.Options", "");
        assert_eq!(config_path_from_any(&empty).unwrap(), None);
    }

    #[test]
    fn bad_wire_type_is_an_error() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x0f, 0x00],
            ..Default::default()
        };
        assert!(config_path_from_any(&any).is_err());
    }

    #[test]
    fn truncated_options_are_an_error() {
        let mut any = options_any("runtimeoptions.v1.Options", "/abc");
        any.value.truncate(any.value.len() - 2);
        assert!(config_path_from_any(&any).is_err());
    }
}
