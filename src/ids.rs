//! Owner translation between the ids stored in the layers ("disk") and the
//! ids the mount shows: fuse-overlayfs's `uidmapping=`/`gidmapping=`
//! (`DISK:SHOWN:LEN` ranges) and `squash_to_root`/`squash_to_uid`/
//! `squash_to_gid`.

use crate::options::{IdMap, MountOptions};

/// What an id outside every mapped range is shown as.
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Debug, Clone, Default)]
pub struct IdMapper {
    uids: Vec<IdMap>,
    gids: Vec<IdMap>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
}

fn to_shown(maps: &[IdMap], disk: u32) -> u32 {
    if maps.is_empty() {
        return disk;
    }
    maps.iter()
        .find(|m| disk >= m.disk && disk - m.disk < m.len)
        .map_or(OVERFLOW_ID, |m| m.shown + (disk - m.disk))
}

fn to_disk(maps: &[IdMap], shown: u32) -> Option<u32> {
    if maps.is_empty() {
        return Some(shown);
    }
    maps.iter()
        .find(|m| shown >= m.shown && shown - m.shown < m.len)
        .map(|m| m.disk + (shown - m.shown))
}

impl IdMapper {
    pub fn from_options(o: &MountOptions) -> IdMapper {
        let root = o.squash_to_root.then_some(0);
        IdMapper {
            uids: o.uid_mapping.clone(),
            gids: o.gid_mapping.clone(),
            squash_uid: o.squash_to_uid.or(root),
            squash_gid: o.squash_to_gid.or(root),
        }
    }

    /// Whether every id passes through unchanged.
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    pub fn shown_uid(&self, disk: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| to_shown(&self.uids, disk))
    }

    pub fn shown_gid(&self, disk: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| to_shown(&self.gids, disk))
    }

    /// The id to store for a shown uid; None when no range maps it.
    pub fn disk_uid(&self, shown: u32) -> Option<u32> {
        to_disk(&self.uids, shown)
    }

    pub fn disk_gid(&self, shown: u32) -> Option<u32> {
        to_disk(&self.gids, shown)
    }

    /// Whether chown must leave owners alone (squashed ids have no inverse).
    pub fn squashes_uid(&self) -> bool {
        self.squash_uid.is_some()
    }

    pub fn squashes_gid(&self) -> bool {
        self.squash_gid.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_and_overflows() {
        let o = MountOptions::parse(["uidmapping=0:100000:1000:1000:1000:10,gidmapping=:0:5:1"])
            .unwrap();
        let m = IdMapper::from_options(&o);
        assert_eq!(m.shown_uid(0), 100000);
        assert_eq!(m.shown_uid(999), 100999);
        assert_eq!(m.shown_uid(1005), 1005);
        assert_eq!(m.shown_uid(5000), OVERFLOW_ID);
        assert_eq!(m.disk_uid(100001), Some(1));
        assert_eq!(m.disk_uid(7), None);
        assert_eq!((m.shown_gid(0), m.disk_gid(5)), (5, Some(0)));
        let s = IdMapper::from_options(&MountOptions::parse(["squash_to_root"]).unwrap());
        assert_eq!((s.shown_uid(1234), s.shown_gid(99)), (0, 0));
        assert!(IdMapper::default().is_identity());
    }
}
