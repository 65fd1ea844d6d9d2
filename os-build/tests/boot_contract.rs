//! The boot contract (docs/boot.md) end to end on the host: what os-build writes, and what
//! systemd-boot sets, is read back by each reader through its own entry point — early-init,
//! the updater (its command line, the health gate) and berth-probe. A rename on one side
//! fails here, not an hour later in QEMU.

use std::io;
use std::path::Path;

use boot_contract::{efi, Partition, Slot, UkiName};
use clap::Parser;
use os_build::arch::Arch;
use os_build::{disk, esp, pipeline, variant, verity};
use probe::dm::{DeviceMapper, TargetStatus};

/// berth-probe's device-mapper, answering for the verity root.
struct VerityRoot;

impl DeviceMapper for VerityRoot {
    fn table_status(&self, _name: &str) -> io::Result<TargetStatus> {
        Ok(TargetStatus {
            target_type: "verity".into(),
            status: "V".into(),
        })
    }
}

fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, data).expect("write");
}

fn probe_fact(root: &Path, key: &str) -> String {
    probe::facts(root, &VerityRoot)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("probe prints no {key}"))
}

fn qemu_variant() -> variant::Variant {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    variant::load(&workspace.join("variants"), "qemu", Arch::X86_64).expect("qemu variant")
}

/// Every `berth.*` field os-build writes is what early-init reads; the slot is what the
/// updater and the probe read.
#[test]
fn command_line_written_by_os_build_is_read_by_every_reader() {
    let variant = qemu_variant();
    for (slot, salt) in [(Slot::A, vec![0x00, 0xff, 0x10]), (Slot::B, vec![])] {
        let params = verity::VerityParams {
            root_hash: [0x5c; 32],
            salt: salt.clone(),
            data_blocks: 123_457,
            hash_bytes: 4096 * 900,
        };
        let line = pipeline::cmdline(&variant, slot, &params);
        let host = tempfile::tempdir().expect("tempdir");
        write(host.path(), "proc/cmdline", format!("{line}\n"));

        let parsed = early_init::boot::read_cmdline(host.path()).expect("early-init reads it");
        assert_eq!(parsed.slot, slot, "{line}");
        assert_eq!(parsed.verity.root_hash, params.root_hash_hex());
        assert_eq!(
            parsed.verity.salt,
            (!salt.is_empty()).then(|| hex::encode(&salt))
        );
        assert_eq!(parsed.verity.data_blocks, params.data_blocks);
        assert_eq!(parsed.verity.hash_start, verity::HASH_START_BLOCK);

        assert_eq!(
            updater::host::running_slot(host.path()).expect("slot"),
            slot
        );
        assert_eq!(
            updater::host::inactive_slot(host.path()).expect("slot"),
            slot.other()
        );
        assert_eq!(probe_fact(host.path(), "slot"), slot.to_string());
    }
}

/// The partition names os-build writes into the GPT are the ones early-init looks for and
/// the updater writes to.
#[test]
fn partitions_written_by_os_build_are_found_by_early_init_and_the_updater() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = variant::Partitions {
        esp_mib: 2,
        root_mib: 2,
        verity_mib: 1,
        private_mib: 1,
        data_mib: 1,
    };
    let layout = disk::layout(Arch::X86_64, &sizes, "contract");
    let raw = dir.path().join("disk.raw");
    disk::write_raw(&raw, &layout, &[]).expect("write the disk");

    // What the kernel shows in sysfs for that disk (PARTN, PARTNAME).
    let gpt = gpt::GptConfig::new().open(&raw).expect("read the GPT");
    let devs: Vec<early_init::devices::BlockDev> = gpt
        .partitions()
        .iter()
        .map(|(n, p)| early_init::devices::BlockDev {
            name: format!("vda{n}"),
            disk: "vda".into(),
            partno: Some(*n),
            partname: Some(p.name.clone()),
            major: 254,
            minor: *n,
        })
        .collect();
    for slot in Slot::ALL {
        let found = early_init::devices::select(&devs, slot, &mut |_| false)
            .expect("one disk")
            .expect("every partition of the slot");
        for (dev, role) in [
            (&found.root, Partition::Root(slot)),
            (&found.verity, Partition::Verity(slot)),
            (&found.private, Partition::Private),
            (&found.data, Partition::Data),
        ] {
            assert_eq!(dev.partno, Some(role.number()), "{role}");
            assert_eq!(layout.get(role).number, role.number(), "{role}");
        }

        // The updater writes the inactive slot through its partition labels.
        let cli = updater::cli::Cli::try_parse_from([
            "berth-updater",
            "check",
            "--metadata-url=http://127.0.0.1:1/m/",
            "--targets-url=http://127.0.0.1:1/t/",
            "--seed=1",
            "--variant=qemu",
            "--running-version=1.0.0",
            &format!("--slot={slot}"),
        ])
        .expect("valid arguments");
        let updater::cli::Command::Check(args) = cli.command else {
            panic!("not check")
        };
        let config = args.config(Path::new("/nonexistent")).expect("config");
        assert_eq!(config.slot, slot);
        // Without flags the updater looks the partitions up by these labels on the disk that
        // holds the running root (updater::host::partition_on).
        assert!(config.partitions.root.is_none() && config.partitions.verity.is_none());
        for role in [Partition::Root(slot), Partition::Verity(slot)] {
            let written = &gpt.partitions()[&role.number()];
            assert_eq!(role.label(), written.name, "{role}");
        }
    }
}

/// The UKI os-build installs, the EFI variables systemd-boot then sets, and what each reader
/// makes of them: early-init (the boot disk), the health gate (the counted UKI to bless) and
/// the probe (entry and stub image).
#[test]
fn uki_names_and_loader_variables_are_read_by_every_reader() {
    let version = "2.1.0";
    let installed = esp::initial_uki_path(version);
    let file_name = installed.rsplit('/').next().expect("a file name");
    assert_eq!(
        updater::slot::uki_version(file_name),
        Some(semver::Version::new(2, 1, 0))
    );
    assert_eq!(updater::health::boot_counter(file_name), Some((3, 0)));

    // First try: systemd-boot renamed the entry to +2-1 and says so.
    let tried = UkiName::parse(file_name)
        .map(|mut n| {
            n.counter = Some(boot_contract::BootCounter {
                left: 2,
                done: Some(1),
            });
            n
        })
        .expect("a Berth UKI");
    let esp_guid = "1B4E28BA-2FA1-11D2-883F-0016D3CCA427";
    let host = tempfile::tempdir().expect("tempdir");
    let root = host.path();
    let variant = qemu_variant();
    let params = verity::VerityParams {
        root_hash: [1; 32],
        salt: vec![],
        data_blocks: 8,
        hash_bytes: 8192,
    };
    write(
        root,
        "proc/cmdline",
        pipeline::cmdline(&variant, Slot::B, &params),
    );
    write(
        root,
        "usr/lib/os-release",
        format!("VERSION_ID={version}\n"),
    );
    let backslashed = format!("\\{}", tried.esp_path().replace('/', "\\"));
    for (var, value) in [
        (efi::LOADER_DEVICE_PART_UUID, esp_guid.to_owned()),
        (efi::LOADER_BOOT_COUNT_PATH, backslashed.clone()),
        (efi::LOADER_ENTRY_SELECTED, tried.to_string()),
        (efi::STUB_IMAGE_IDENTIFIER, backslashed.clone()),
    ] {
        write(
            root,
            &format!("{}/{}", efi::EFIVARS_DIR, var.file_name()),
            efi::encode_string(&value),
        );
    }

    let boot_disk = early_init::devices::BootDisk::from_efivars(root);
    assert_eq!(
        boot_disk.esp_guid.map(|g| g.to_string().to_uppercase()),
        Some(esp_guid.to_owned())
    );

    let booted = updater::health::Booted::read(root).expect("the gate reads the boot");
    assert_eq!(booted.slot, Slot::B);
    assert_eq!(booted.version.to_string(), version);
    let counted = booted.counted.expect("a counted entry");
    assert_eq!(counted.to_str(), Some(tried.esp_path().as_str()));
    assert_eq!(
        updater::health::blessed_name(&tried.to_string()),
        Some(UkiName::good(version).to_string())
    );

    assert_eq!(probe_fact(root, "loader-entry"), tried.to_string());
    assert_eq!(probe_fact(root, "stub-image"), backslashed);
    assert_eq!(probe_fact(root, "slot"), "b");
}
