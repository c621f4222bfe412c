//! Pins an older agent left that this version must not reuse as they are.
//!
//! `install` reuses pinned maps by name, so the enrolled pods survive an
//! upgrade. Two earlier maps cannot be reused:
//! - `NODE_ADDRS` exempted inbound from every node address (a STRICT and
//!   policy bypass). Older pods' sk_lookup links keep reading it until the
//!   agent relinks them, so it is emptied first (those pods then capture
//!   node traffic, probes included, until relinked: closed, not open), then
//!   unpinned.
//! - `STATS` is sized by the number of counters; a smaller one is replaced
//!   (the counters restart from zero).

use aya::maps::{HashMap, Map, MapData};
use pillion_common::{IpKey, names, stat};

use super::{PinLayout, map_err, remove_pin};
use crate::error::KernelError;

pub fn retire_stale_maps(pins: &PinLayout) -> Result<(), KernelError> {
    let legacy = pins.map(names::MAP_NODE_ADDRS_LEGACY);
    if legacy.exists() {
        let name = names::MAP_NODE_ADDRS_LEGACY;
        let data = MapData::from_pin(&legacy).map_err(map_err(name))?;
        let mut map: HashMap<MapData, IpKey, u32> =
            Map::from_map_data(data).map_err(map_err(name))?.try_into().map_err(map_err(name))?;
        let keys: Vec<IpKey> = map.keys().filter_map(Result::ok).collect();
        for key in &keys {
            map.remove(key).map_err(map_err(name))?;
        }
        remove_pin(&legacy)?;
        tracing::info!(entries = keys.len(), "upgrade: node addresses are no longer exempt from capture");
    }
    let stats = pins.map(names::MAP_STATS);
    if stats.exists() {
        let data = MapData::from_pin(&stats).map_err(map_err(names::MAP_STATS))?;
        let size = data.info().map_err(map_err(names::MAP_STATS))?.max_entries();
        if size != stat::COUNT {
            remove_pin(&stats)?;
        }
    }
    Ok(())
}
