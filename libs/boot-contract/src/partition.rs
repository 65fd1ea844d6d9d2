//! The GPT partitions by role. Readers find a partition by its GPT partition name
//! (`PARTNAME=` in sysfs, `/dev/disk/by-partlabel/`), only on the disk that holds the slot's
//! root partition; `private` and `data` carry the same name as their ext4 label.

use std::fmt;

use crate::slot::Slot;

/// What a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Partition {
    /// FAT32: systemd-boot and one UKI per slot.
    Esp,
    /// EROFS root image of a slot.
    Root(Slot),
    /// dm-verity superblock and hash tree of a slot's root.
    Verity(Slot),
    /// ext4: settings datastore, user data copy, update state, machine-id.
    Private,
    /// ext4: `/var`, `/opt`, containers; grown to the end of the disk.
    Data,
}

impl Partition {
    /// Every partition, in disk order: the partition number is the index plus one.
    pub const LAYOUT: [Partition; 7] = [
        Partition::Esp,
        Partition::Root(Slot::A),
        Partition::Verity(Slot::A),
        Partition::Root(Slot::B),
        Partition::Verity(Slot::B),
        Partition::Private,
        Partition::Data,
    ];

    /// The GPT partition name.
    pub const fn label(self) -> &'static str {
        match self {
            Partition::Esp => "ESP",
            Partition::Root(Slot::A) => "root-a",
            Partition::Root(Slot::B) => "root-b",
            Partition::Verity(Slot::A) => "verity-a",
            Partition::Verity(Slot::B) => "verity-b",
            Partition::Private => "private",
            Partition::Data => "data",
        }
    }

    /// The partition whose GPT partition name is `label`.
    pub fn from_label(label: &str) -> Option<Partition> {
        Self::LAYOUT.into_iter().find(|p| p.label() == label)
    }

    /// 1-based partition number in the layout os-build writes.
    pub fn number(self) -> u32 {
        let index = Self::LAYOUT
            .iter()
            .position(|p| *p == self)
            .expect("LAYOUT lists every partition");
        index as u32 + 1
    }

    /// The udev link of the partition on a running host.
    pub fn by_partlabel(self) -> String {
        format!("/dev/disk/by-partlabel/{}", self.label())
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_in_disk_order() {
        let labels: Vec<&str> = Partition::LAYOUT.iter().map(|p| p.label()).collect();
        assert_eq!(
            labels,
            ["ESP", "root-a", "verity-a", "root-b", "verity-b", "private", "data"]
        );
        for (i, p) in Partition::LAYOUT.into_iter().enumerate() {
            assert_eq!(Partition::from_label(p.label()), Some(p));
            assert_eq!(p.number(), i as u32 + 1);
            assert_eq!(p.to_string(), p.label());
        }
        assert_eq!(Partition::from_label("root-c"), None);
        assert_eq!(
            Partition::Root(Slot::B).by_partlabel(),
            "/dev/disk/by-partlabel/root-b"
        );
    }
}
