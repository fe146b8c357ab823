//! The previous plugins' result, passed on unchanged in meaning in the config's `cniVersion`
//! (CNI spec: a chained plugin must echo `prevResult` unless it modifies it; the runtime
//! expects the answer in the network's version).
//!
//! The result is kept as JSON so fields we do not model survive. Version conversion touches
//! only what the spec changed between result formats (SPEC.md "Result"; cni.dev
//! spec-upgrades): 0.3.x/0.4.0 `ips[]` carry `version` ("4"/"6"), 1.0.0 dropped it; 1.1.0
//! added optional interface and route fields that older formats lack, so they are dropped
//! when converting down (as the CNI library's typed conversion does).
//!
//! `prevResult` has the config's version unless it says otherwise in its own `cniVersion`.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::version::Format;
use crate::event::{EventIp, IpNet};

/// A `prevResult` that cannot be passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("prevResult is not a JSON object")]
    NotAnObject,
    #[error("prevResult has cniVersion {0:?}, which this plugin cannot convert (supported: 0.3.0 to 1.1.0)")]
    UnsupportedVersion(String),
    #[error("prevResult.{field} is not a list of objects")]
    NotAList { field: &'static str },
    #[error("prevResult.ips[{index}].address {address:?} is not an IP address with prefix length")]
    BadAddress { index: usize, address: String },
    #[error("prevResult.ips[{index}].gateway {gateway} is not an IP address")]
    BadGateway { index: usize, gateway: String },
    #[error("prevResult.ips[{index}].interface {interface} is not an interface index")]
    BadInterface { index: usize, interface: String },
}

/// Fields 1.1.0 added to `interfaces[]` and to `routes[]`.
const V11_INTERFACE_FIELDS: &[&str] = &["mtu", "socketPath", "pciID"];
const V11_ROUTE_FIELDS: &[&str] = &["mtu", "advmss", "priority", "table", "scope"];

/// `{"cniVersion": <version>}`: what a chained plugin answers when nothing came before it.
pub fn empty(version: &str) -> Value {
    let mut map = Map::new();
    map.insert("cniVersion".into(), Value::String(version.into()));
    Value::Object(map)
}

/// `prev` in format `to_version`, with `cniVersion` first and set to `to_version`.
pub fn convert(prev: &Value, to_version: &str) -> Result<Value, ResultError> {
    let obj = prev.as_object().ok_or(ResultError::NotAnObject)?;
    let from_version = match obj.get("cniVersion") {
        Some(Value::String(v)) => v.as_str(),
        Some(_) => {
            return Err(ResultError::UnsupportedVersion(format!(
                "{}",
                obj["cniVersion"]
            )))
        }
        None => to_version,
    };
    let from = Format::of(from_version)
        .ok_or_else(|| ResultError::UnsupportedVersion(from_version.to_string()))?;
    let to = Format::of(to_version)
        .ok_or_else(|| ResultError::UnsupportedVersion(to_version.to_string()))?;

    let mut out = Map::new();
    out.insert("cniVersion".into(), Value::String(to_version.into()));
    for (key, value) in obj {
        if key != "cniVersion" {
            out.insert(key.clone(), value.clone());
        }
    }
    // Validate addresses whatever the conversion: the agent needs them.
    let ips = ip_entries(&out)?;
    for (index, ip) in ips.iter().enumerate() {
        address_of(index, ip)?;
    }
    match (from, to) {
        (Format::V03, Format::V10 | Format::V11) => {
            for_each_entry(&mut out, "ips", |ip| {
                ip.shift_remove("version");
            });
        }
        (Format::V10 | Format::V11, Format::V03) => {
            let mut index = 0;
            let mut bad = None;
            for_each_entry(&mut out, "ips", |ip| {
                match address_of(index, ip) {
                    Ok(addr) => {
                        let v = if addr.is_ipv4() { "4" } else { "6" };
                        set_first(ip, "version", Value::String(v.into()));
                    }
                    Err(e) => bad = Some(e),
                }
                index += 1;
            });
            if let Some(e) = bad {
                return Err(e);
            }
            if from == Format::V11 {
                for_each_entry(&mut out, "interfaces", |i| {
                    drop_fields(i, V11_INTERFACE_FIELDS)
                });
                for_each_entry(&mut out, "routes", |r| drop_fields(r, V11_ROUTE_FIELDS));
            }
        }
        _ => {}
    }
    Ok(Value::Object(out))
}

/// The result's `ips[]` as the agent event's entries, in order: interface index, address with
/// its prefix, gateway (what Istio's plugin copies from the parsed prevResult into its event,
/// cni/pkg/plugin/cnieventclient.go).
pub fn event_ips(result: &Value) -> Result<Vec<EventIp>, ResultError> {
    let obj = result.as_object().ok_or(ResultError::NotAnObject)?;
    ip_entries(obj)?
        .iter()
        .enumerate()
        .map(|(index, ip)| event_ip(index, ip))
        .collect()
}

fn event_ip(index: usize, ip: &Map<String, Value>) -> Result<EventIp, ResultError> {
    let (addr, prefix) = cidr_of(index, ip)?;
    let address = IpNet::cidr(addr, prefix).map_err(|_| bad_address(index, ip))?;
    // The CNI spec's `interface` is an index into `interfaces`; absent = not said.
    let interface = match ip.get("interface") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|i| i64::try_from(i).ok())
                .ok_or_else(|| ResultError::BadInterface {
                    index,
                    interface: v.to_string(),
                })?,
        ),
    };
    let gateway = match ip.get("gateway") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|g| g.parse::<IpAddr>().ok())
                .ok_or_else(|| ResultError::BadGateway {
                    index,
                    gateway: v.to_string(),
                })?,
        ),
    };
    Ok(EventIp {
        interface,
        address,
        gateway,
    })
}

/// `ips[]` as objects (absent = none).
fn ip_entries(obj: &Map<String, Value>) -> Result<Vec<&Map<String, Value>>, ResultError> {
    match obj.get("ips") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_object().ok_or(ResultError::NotAList { field: "ips" }))
            .collect(),
        Some(_) => Err(ResultError::NotAList { field: "ips" }),
    }
}

fn address_of(index: usize, ip: &Map<String, Value>) -> Result<IpAddr, ResultError> {
    cidr_of(index, ip).map(|(addr, _)| addr)
}

/// `ips[index].address` as address and prefix length.
fn cidr_of(index: usize, ip: &Map<String, Value>) -> Result<(IpAddr, u8), ResultError> {
    let bad = || bad_address(index, ip);
    let raw = ip.get("address").and_then(Value::as_str).ok_or_else(bad)?;
    let (addr, prefix) = raw.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(p) if p <= max && !prefix.starts_with('+') => Ok((addr, p)),
        _ => Err(bad()),
    }
}

fn bad_address(index: usize, ip: &Map<String, Value>) -> ResultError {
    ResultError::BadAddress {
        index,
        address: ip
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

/// Applies `f` to each object in `obj[field]` (a list; anything else is left alone — the
/// shapes that matter were validated before).
fn for_each_entry(
    obj: &mut Map<String, Value>,
    field: &str,
    mut f: impl FnMut(&mut Map<String, Value>),
) {
    if let Some(Value::Array(items)) = obj.get_mut(field) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

fn set_first(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let rest = std::mem::take(obj);
    obj.insert(key.into(), value);
    obj.extend(rest.into_iter().filter(|(k, _)| k != key));
}

fn drop_fields(obj: &mut Map<String, Value>, fields: &[&str]) {
    for f in fields {
        obj.shift_remove(*f);
    }
}

#[cfg(test)]
mod tests;
