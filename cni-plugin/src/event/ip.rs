//! The event's `IPs` entries, in Istio's wire shape.
//!
//! Istio's agent decodes the event with Go's `encoding/json` into
//! `[]IPConfig{Interface *int; Address net.IPNet; Gateway net.IP}` (istio/istio
//! `cni/pkg/nodeagent/cni-watcher.go`), and Istio's plugin fills those from `prevResult.ips[]`
//! as the CNI library parsed them: `address` through `ParseCIDR` keeping the host address and
//! its prefix mask (`cni/pkg/plugin/cnieventclient.go`). So each entry is what Go writes for
//! those types:
//! - `Interface`: a number, or `null` for a nil `*int` (the result named no interface);
//! - `Address`: `net.IPNet` has no JSON methods of its own, so it is the struct
//!   `{"IP": …, "Mask": …}`: `net.IP` as its text, `net.IPMask` as plain bytes, i.e. base64 —
//!   4 bytes for an IPv4 prefix, 16 for IPv6 (Go's `ParseCIDR`), `null` when nil;
//! - `Gateway`: `net.IP`'s text, and `""` when there is none (Go's `net.IP.MarshalText` writes a
//!   nil IP as the empty string, not `null`).
//!
//! Decoding is lenient where it costs nothing: absent or `null` fields are Go's zero values, and
//! an entry may be a bare `"10.0.0.5"` or `"10.0.0.5/24"` (what nodetunnel's plugin sent
//! before). What Go's decoder would refuse too (an IP that does not parse, a mask that is not
//! base64) fails the decode, naming the entry. What it would take but cannot be used (no IP, a
//! mask that is not a prefix of the address's family) is refused by
//! [`super::PluginEvent::addresses`].

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One pod address as the previous plugins assigned it (Istio's `IPConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIp {
    /// Index into the result's `interfaces` (`None`: the result did not say).
    pub interface: Option<i64>,
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// Go's `net.IPNet`: an address and its mask bytes, kept as sent so that a bad mask can be
/// reported rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpNet {
    /// `None`: Go's nil IP (sent as `""` or `null`).
    pub ip: Option<IpAddr>,
    /// Empty: Go's nil mask (`null`), e.g. from a bare address.
    pub mask: Vec<u8>,
}

/// Why one `IPs` entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpProblem {
    #[error("{0:?} is neither an IP address nor an address with a prefix length")]
    BadText(String),
    #[error(
        "expected an object with Interface, Address and Gateway (or an address string), got {0}"
    )]
    NotAnEntry(&'static str),
    #[error("Interface {0} is not an integer")]
    BadInterface(String),
    #[error("Address {0} is not an object with IP and Mask")]
    BadAddress(String),
    #[error("Address.IP {0} is not an IP address")]
    BadIp(String),
    #[error("Address.Mask {text} is not base64: {source}")]
    BadMaskEncoding {
        text: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("Address.Mask {0} is not a base64 string")]
    MaskNotText(String),
    #[error("Gateway {0} is not an IP address")]
    BadGateway(String),
    #[error("Address.IP is empty")]
    NoAddress,
    #[error("prefix length {prefix} is longer than the {max} bits of {ip}")]
    PrefixTooLong { ip: IpAddr, prefix: u8, max: u8 },
    #[error("Address.Mask {mask:?} ({len} bytes) does not fit {ip}: IPv4 takes a 4-byte mask, IPv6 a 16-byte one")]
    MaskLength {
        ip: IpAddr,
        mask: String,
        len: usize,
    },
    #[error("Address.Mask {mask:?} is not a prefix mask (ones, then zeros)")]
    NotAPrefix { mask: String },
}

/// An `IPs` entry that cannot be used, by position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPs[{index}]: {problem}")]
pub struct EventIpError {
    pub index: usize,
    #[source]
    pub problem: IpProblem,
}

impl IpNet {
    /// `ip` with a mask of `prefix_len` ones, as long as the address (Go's `CIDRMask`).
    pub fn cidr(ip: IpAddr, prefix_len: u8) -> Result<IpNet, IpProblem> {
        let max = bits(ip);
        if prefix_len > max {
            return Err(IpProblem::PrefixTooLong {
                ip,
                prefix: prefix_len,
                max,
            });
        }
        Ok(IpNet {
            ip: Some(ip),
            mask: prefix_mask(prefix_len, max / 8),
        })
    }

    /// `ip` without a mask.
    pub fn address_only(ip: IpAddr) -> IpNet {
        IpNet {
            ip: Some(ip),
            mask: Vec::new(),
        }
    }

    /// The mask's prefix length in the address's family; `None` without a mask. An IPv4
    /// address with a 16-byte mask is read as Go does (its last 4 bytes), provided the first
    /// 12 are all ones.
    pub fn prefix_len(&self) -> Result<Option<u8>, IpProblem> {
        let ip = self.ip.ok_or(IpProblem::NoAddress)?;
        if self.mask.is_empty() {
            return Ok(None);
        }
        let wrong_length = || IpProblem::MaskLength {
            ip,
            mask: BASE64.encode(&self.mask),
            len: self.mask.len(),
        };
        // Leading mask bits that lie outside the address (Go's IPv4 in a 16-byte mask).
        let outside = match (ip, self.mask.len()) {
            (IpAddr::V4(_), 4) | (IpAddr::V6(_), 16) => 0,
            (IpAddr::V4(_), 16) => 96,
            _ => return Err(wrong_length()),
        };
        let ones = leading_ones(&self.mask).ok_or_else(|| IpProblem::NotAPrefix {
            mask: BASE64.encode(&self.mask),
        })?;
        ones.checked_sub(outside).map(Some).ok_or_else(wrong_length)
    }
}

impl FromStr for IpNet {
    type Err = IpProblem;

    /// `"10.0.0.5"` (no mask) or `"10.0.0.5/24"`.
    fn from_str(text: &str) -> Result<IpNet, IpProblem> {
        let bad = || IpProblem::BadText(text.to_string());
        match text.split_once('/') {
            None => text.parse().map(IpNet::address_only).map_err(|_| bad()),
            Some((addr, prefix)) => {
                let ip: IpAddr = addr.parse().map_err(|_| bad())?;
                // Digits only: `u8::from_str` would also take a leading `+`.
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let prefix: u8 = prefix.parse().map_err(|_| bad())?;
                IpNet::cidr(ip, prefix)
            }
        }
    }
}

/// `10.0.0.5/24`, `10.0.0.5` without a mask, the mask's base64 when it is not a prefix.
impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(ip) = self.ip else {
            return f.write_str("(no IP)");
        };
        match self.prefix_len() {
            Ok(Some(prefix)) => write!(f, "{ip}/{prefix}"),
            Ok(None) => write!(f, "{ip}"),
            Err(_) => write!(f, "{ip} mask {}", BASE64.encode(&self.mask)),
        }
    }
}

/// Address bits of `ip`'s family.
fn bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `prefix_len` ones then zeros, `len` bytes.
fn prefix_mask(prefix_len: u8, len: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let ones = prefix_len.saturating_sub(i * 8).min(8);
            // 0..=8 ones from the top of the byte; 8 would overflow the shift.
            if ones == 8 {
                0xff
            } else {
                !(0xffu8 >> ones)
            }
        })
        .collect()
}

/// The number of leading one bits if `mask` is ones followed by zeros only.
fn leading_ones(mask: &[u8]) -> Option<u8> {
    let mut ones: u32 = 0;
    let mut in_zeros = false;
    for byte in mask {
        if in_zeros {
            if *byte != 0 {
                return None;
            }
            continue;
        }
        let lead = byte.leading_ones();
        // The rest of the byte after its leading ones must be zero.
        if lead < 8 && (byte << lead) != 0 {
            return None;
        }
        ones += lead;
        in_zeros = lead < 8;
    }
    u8::try_from(ones).ok()
}

/// Go's text for an IP: IPv4-mapped IPv6 addresses print as IPv4 (`net.IP.String`).
fn go_ip_text(ip: Option<IpAddr>) -> String {
    match ip {
        None => String::new(),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Some(ip) => ip.to_string(),
    }
}

#[derive(Serialize)]
struct GoIpConfig {
    #[serde(rename = "Interface")]
    interface: Option<i64>,
    #[serde(rename = "Address")]
    address: GoIpNet,
    #[serde(rename = "Gateway")]
    gateway: String,
}

#[derive(Serialize)]
struct GoIpNet {
    #[serde(rename = "IP")]
    ip: String,
    #[serde(rename = "Mask")]
    mask: Option<String>,
}

impl Serialize for EventIp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        GoIpConfig {
            interface: self.interface,
            address: GoIpNet {
                ip: go_ip_text(self.address.ip),
                mask: (!self.address.mask.is_empty()).then(|| BASE64.encode(&self.address.mask)),
            },
            gateway: go_ip_text(self.gateway),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventIp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<EventIp, D::Error> {
        EventIp::from_json(&Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl EventIp {
    /// One entry from its JSON: Istio's object or a bare address string.
    pub fn from_json(value: &Value) -> Result<EventIp, IpProblem> {
        match value {
            Value::String(text) => Ok(EventIp {
                interface: None,
                address: text.parse()?,
                gateway: None,
            }),
            Value::Object(fields) => Ok(EventIp {
                interface: interface_of(fields.get("Interface"))?,
                address: address_of(fields.get("Address"))?,
                gateway: optional_ip(fields.get("Gateway"))
                    .map_err(|_| IpProblem::BadGateway(json_text(fields.get("Gateway"))))?,
            }),
            other => Err(IpProblem::NotAnEntry(kind(other))),
        }
    }
}

fn interface_of(value: Option<&Value>) -> Result<Option<i64>, IpProblem> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| IpProblem::BadInterface(v.to_string())),
    }
}

fn address_of(value: Option<&Value>) -> Result<IpNet, IpProblem> {
    let fields: &Map<String, Value> = match value {
        None | Some(Value::Null) => return Ok(IpNet::default()),
        Some(Value::Object(fields)) => fields,
        Some(other) => return Err(IpProblem::BadAddress(other.to_string())),
    };
    let ip =
        optional_ip(fields.get("IP")).map_err(|_| IpProblem::BadIp(json_text(fields.get("IP"))))?;
    let mask = match fields.get("Mask") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => {
            BASE64
                .decode(text)
                .map_err(|source| IpProblem::BadMaskEncoding {
                    text: format!("{text:?}"),
                    source,
                })?
        }
        Some(other) => return Err(IpProblem::MaskNotText(other.to_string())),
    };
    Ok(IpNet { ip, mask })
}

/// A `net.IP` field: absent, `null` and `""` are nil.
fn optional_ip(value: Option<&Value>) -> Result<Option<IpAddr>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => text.parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn json_text(value: Option<&Value>) -> String {
    value.map(Value::to_string).unwrap_or_default()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `IPs` as Go writes a `[]IPConfig`: `null` when empty (a nil slice).
pub(super) fn serialize_list<S: Serializer>(
    ips: &[EventIp],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if ips.is_empty() {
        serializer.serialize_none()
    } else {
        serializer.collect_seq(ips)
    }
}

/// `IPs`: `null` or a list; a bad entry fails the decode with its index.
pub(super) fn deserialize_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<EventIp>, D::Error> {
    let Some(values) = Option::<Vec<Value>>::deserialize(deserializer)? else {
        return Ok(Vec::new());
    };
    values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            EventIp::from_json(value).map_err(|problem| EventIpError { index, problem })
        })
        .collect::<Result<_, _>>()
        .map_err(D::Error::custom)
}

#[cfg(test)]
mod tests;
