//! Distribution formats made from the finished `disk.raw`:
//!
//! - `disk.ova` for vSphere: a USTAR archive holding, in this order, an OVF 1.0 descriptor,
//!   its manifest (`SHA256(file)= hex` per file) and the disk as a streamOptimized VMDK
//!   (`qemu-img convert -O vmdk -o subformat=streamOptimized`): the order DSP0243 asks for and
//!   ovftool writes, so vSphere can read the descriptor without scanning the archive. The
//!   descriptor asks for EFI firmware, a SATA (AHCI) controller holding the disk and a CD-ROM
//!   (AHCI works on both architectures; Debian's arm64 kernel has no vmw_pvscsi), a vmxnet3
//!   NIC, and declares the vApp property `user-data` with the ISO
//!   transport, which is how boot-config reads user data on vSphere (ovf-env.xml on the
//!   CD-ROM).
//! - `disk.raw.gz` for bare metal (Tinkerbell's image2disk streams it onto the disk).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::arch::Arch;

/// What the descriptor says about the appliance.
#[derive(Debug, Clone)]
pub struct Appliance<'a> {
    /// Base name of the files inside the OVA (`berth-vmware-k8s-1.33-x86_64-0.1.0`).
    pub name: &'a str,
    pub description: &'a str,
    pub version: &'a str,
    pub arch: Arch,
    pub cpus: u32,
    pub memory_mib: u64,
}

/// Writes `out` (an OVA) from the raw disk `raw`, using `work` for the VMDK.
pub fn write_ova(raw: &Path, appliance: &Appliance<'_>, work: &Path, out: &Path) -> Result<()> {
    let capacity = std::fs::metadata(raw)
        .with_context(|| format!("cannot read {}", raw.display()))?
        .len();
    let vmdk_name = format!("{}-disk1.vmdk", appliance.name);
    let vmdk = work.join(&vmdk_name);
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(raw)
        .arg(&vmdk)
        .status()
        .context("cannot run qemu-img (qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img convert to {} failed ({status})", vmdk.display());
    }
    let vmdk_size = std::fs::metadata(&vmdk)
        .with_context(|| format!("cannot read {}", vmdk.display()))?
        .len();
    let ovf_name = format!("{}.ovf", appliance.name);
    let mf_name = format!("{}.mf", appliance.name);
    let ovf = descriptor(appliance, &vmdk_name, vmdk_size, capacity);
    let manifest = format!(
        "SHA256({ovf_name})= {}\nSHA256({vmdk_name})= {}\n",
        hex::encode(Sha256::digest(ovf.as_bytes())),
        sha256_file(&vmdk)?
    );

    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut append = |name: &str, size: u64, data: &mut dyn Read| -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)
            .with_context(|| format!("cannot add {name} to {}", out.display()))
    };
    append(&ovf_name, ovf.len() as u64, &mut ovf.as_bytes())?;
    append(&mf_name, manifest.len() as u64, &mut manifest.as_bytes())?;
    let mut disk =
        std::fs::File::open(&vmdk).with_context(|| format!("cannot open {}", vmdk.display()))?;
    append(&vmdk_name, vmdk_size, &mut disk)?;
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::remove_file(&vmdk).with_context(|| format!("cannot remove {}", vmdk.display()))?;
    Ok(())
}

/// Writes `out`, the gzip-compressed `raw`.
pub fn write_raw_gz(raw: &Path, out: &Path) -> Result<()> {
    let mut input =
        std::fs::File::open(raw).with_context(|| format!("cannot open {}", raw.display()))?;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::with_capacity(1 << 20, file),
        flate2::Compression::default(),
    );
    std::io::copy(&mut input, &mut gz)
        .and_then(|_| gz.finish())
        .and_then(|mut w| w.flush())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OVF 1.0 descriptor (VMware's dialect: `vmw:` firmware and guest OS type).
pub fn descriptor(a: &Appliance<'_>, vmdk: &str, vmdk_size: u64, capacity: u64) -> String {
    let name = xml_escape(a.name);
    let description = xml_escape(a.description);
    let version = xml_escape(a.version);
    let os_type = match a.arch {
        Arch::X86_64 => "other5xLinux64Guest",
        Arch::Aarch64 => "arm-other5xlinux-64Guest",
    };
    let cpus = a.cpus;
    let memory = a.memory_mib;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="berth-{version}" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{vmdk}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="{os_type}">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="iso com.vmware.guestInfo">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-15</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>SATA Controller 0</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>5</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>1</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Description>CD-ROM for the OVF environment (ISO transport)</rasd:Description>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>5</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
    <ProductSection>
      <Info>Information about the installed software</Info>
      <Product>Berth</Product>
      <Vendor>Berth</Vendor>
      <Version>{version}</Version>
      <FullVersion>{description} {version}</FullVersion>
      <Category>Berth</Category>
      <Property ovf:key="user-data" ovf:type="string" ovf:userConfigurable="true" ovf:value="">
        <Label>User data</Label>
        <Description>Berth user data (TOML settings), base64-encoded, optionally gzip-compressed first</Description>
      </Property>
    </ProductSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn qemu_img_present() -> bool {
        Command::new("qemu-img").arg("--version").output().is_ok()
    }

    /// A 6 MiB raw disk with data in a few places and zeros elsewhere.
    fn raw_disk(dir: &Path) -> std::path::PathBuf {
        let mut bytes = vec![0u8; 6 << 20];
        for (i, b) in bytes[..200_000].iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        bytes[(5 << 20)..(5 << 20) + 4096].fill(0xa5);
        let path = dir.join("disk.raw");
        std::fs::write(&path, &bytes).unwrap();
        path
    }

    fn appliance() -> Appliance<'static> {
        Appliance {
            name: "berth-vmware-k8s-1.33-x86_64-1.2.3",
            description: "Berth EKS Anywhere node",
            version: "1.2.3",
            arch: Arch::X86_64,
            cpus: 2,
            memory_mib: 4096,
        }
    }

    #[test]
    fn ova_holds_descriptor_manifest_and_disk_in_order() {
        assert!(
            qemu_img_present(),
            "qemu-img is needed (scripts/host-deps.sh)"
        );
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_disk(dir.path());
        let out = dir.path().join("disk.ova");
        write_ova(&raw, &appliance(), dir.path(), &out).unwrap();

        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            assert!(e.header().as_ustar().is_some(), "every entry must be USTAR");
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            entries.push((name, data));
        }
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let base = appliance().name;
        assert_eq!(
            names,
            [
                format!("{base}.ovf"),
                format!("{base}.mf"),
                format!("{base}-disk1.vmdk")
            ]
        );
        let files: BTreeMap<&str, &[u8]> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();

        // The manifest lists every other file with its sha256.
        let mf = std::str::from_utf8(files[names[1]]).unwrap();
        let mut listed = 0;
        for line in mf.lines() {
            let (file, hash) = line
                .strip_prefix("SHA256(")
                .and_then(|l| l.split_once(")= "))
                .unwrap_or_else(|| panic!("bad manifest line {line:?}"));
            assert_eq!(hash, hex::encode(Sha256::digest(files[file])), "{file}");
            listed += 1;
        }
        assert_eq!(listed, 2);

        // The descriptor parses, names the disk file with its size, and the disk's capacity
        // is the raw disk's size.
        let ovf = std::str::from_utf8(files[names[0]]).unwrap();
        let doc = roxmltree::Document::parse(ovf).unwrap();
        const OVF: &str = "http://schemas.dmtf.org/ovf/envelope/1";
        let file = doc
            .descendants()
            .find(|n| n.has_tag_name((OVF, "File")))
            .unwrap();
        assert_eq!(file.attribute((OVF, "href")), Some(names[2]));
        assert_eq!(
            file.attribute((OVF, "size")),
            Some(files[names[2]].len().to_string().as_str())
        );
        let disk = doc
            .descendants()
            .find(|n| n.has_tag_name((OVF, "Disk")))
            .unwrap();
        assert_eq!(
            disk.attribute((OVF, "fileRef")),
            file.attribute((OVF, "id"))
        );
        assert_eq!(
            disk.attribute((OVF, "capacity")),
            Some((6u64 << 20).to_string().as_str())
        );
        assert!(disk
            .attribute((OVF, "format"))
            .unwrap()
            .ends_with("#streamOptimized"));
        let firmware = doc
            .descendants()
            .find(|n| n.attribute(("http://www.vmware.com/schema/ovf", "key")) == Some("firmware"))
            .unwrap();
        assert_eq!(
            firmware.attribute(("http://www.vmware.com/schema/ovf", "value")),
            Some("efi")
        );
        let property = doc
            .descendants()
            .find(|n| n.has_tag_name((OVF, "Property")))
            .unwrap();
        assert_eq!(property.attribute((OVF, "key")), Some("user-data"));

        // The VMDK is streamOptimized and holds the raw disk's bytes.
        let vmdk = dir.path().join("x.vmdk");
        std::fs::write(&vmdk, files[names[2]]).unwrap();
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&vmdk)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "vmdk");
        assert_eq!(info["virtual-size"], 6u64 << 20);
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
        let back = dir.path().join("back.raw");
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "vmdk", "-O", "raw"])
            .arg(&vmdk)
            .arg(&back)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&raw).unwrap());
        // The intermediate VMDK is not left behind.
        assert!(!dir.path().join(format!("{base}-disk1.vmdk")).exists());
    }

    #[test]
    fn descriptor_escapes_and_names_the_arm_guest() {
        let a = Appliance {
            name: "a<b",
            arch: Arch::Aarch64,
            ..appliance()
        };
        let ovf = descriptor(&a, "d.vmdk", 10, 20);
        let doc = roxmltree::Document::parse(&ovf).unwrap();
        let name = doc.descendants().find(|n| n.has_tag_name("Name")).unwrap();
        assert_eq!(name.text(), Some("a<b"));
        assert!(ovf.contains("vmw:osType=\"arm-other5xlinux-64Guest\""));
    }

    #[test]
    fn raw_gz_gunzips_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let raw = raw_disk(dir.path());
        let out = dir.path().join("disk.raw.gz");
        write_raw_gz(&raw, &out).unwrap();
        let compressed = std::fs::read(&out).unwrap();
        assert!(compressed.len() < (1 << 20), "{}", compressed.len());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == std::fs::read(&raw).unwrap());
    }
}
