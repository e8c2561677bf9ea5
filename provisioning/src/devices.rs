//! `keyward devices`: the USB security devices (HSMs, security keys,
//! smart-card tokens) connected to this machine, found through the
//! kernel's hidraw interface (hidapi, pure Rust: no system library) and,
//! for tokens that are not HID devices (smart-card class), the USB
//! devices sysfs lists. Runs locally; needs no agent.
//!
//! Only devices of known makers, or HID devices that declare the FIDO
//! usage page, are listed: keyboards and mice are no security devices.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// Where the kernel lists hidraw devices.
const HIDRAW_CLASS: &str = "/sys/class/hidraw";
/// Where the kernel lists USB devices.
const USB_DEVICES: &str = "/sys/bus/usb/devices";
/// The HID usage page of FIDO authenticators.
const FIDO_USAGE_PAGE: u16 = 0xF1D0;

/// Makers of USB security devices, by USB vendor id.
pub fn vendor_name(vendor_id: u16) -> Option<&'static str> {
    Some(match vendor_id {
        0x1050 => "Yubico (YubiKey)",
        0x20a0 => "Nitrokey",
        0x0529 => "SafeNet / Thales (eToken)",
        0x08e6 => "Gemalto / Thales (IDPrime)",
        0x096e => "Feitian",
        0x24dc => "Aladdin R.D. (JaCarta)",
        0x04e6 => "Identiv / SCM Microsystems",
        0x076b => "HID Global (OMNIKEY)",
        0x2ccf => "Hypersecu",
        0x1ea8 => "Excelsecu",
        0x1d50 => "OpenMoko (Gnuk, Nitrokey Start)",
        0x0a89 => "Aktiv (Rutoken)",
        0x163c => "Watchdata",
        0x311f => "Token2",
        _ => return None,
    })
}

/// One device as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub vendor_id: u16,
    pub product_id: u16,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// Whether it speaks FIDO (HID usage page 0xF1D0).
    pub fido: bool,
}

impl Device {
    /// The maker's name: known, else the device's own, else its id.
    fn maker(&self) -> String {
        match (vendor_name(self.vendor_id), &self.manufacturer) {
            (Some(known), _) => known.to_string(),
            (None, Some(own)) if !own.trim().is_empty() => own.trim().to_string(),
            (None, _) => format!("vendor {:04x}", self.vendor_id),
        }
    }

    fn listed(&self) -> bool {
        self.fido || vendor_name(self.vendor_id).is_some()
    }
}

/// Why the devices could not be listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// Neither hidraw nor sysfs's USB devices are there to look at.
    NoInterface,
}

/// The security devices connected now.
pub fn scan() -> Result<Vec<Device>, Unavailable> {
    let hidraw = Path::new(HIDRAW_CLASS).is_dir();
    let usb = Path::new(USB_DEVICES).is_dir();
    if !hidraw && !usb {
        return Err(Unavailable::NoInterface);
    }
    let mut found = Vec::new();
    if hidraw {
        if let Ok(api) = hidapi::HidApi::new() {
            found.extend(api.device_list().map(|d| Device {
                vendor_id: d.vendor_id(),
                product_id: d.product_id(),
                manufacturer: d.manufacturer_string().map(str::to_string),
                product: d.product_string().map(str::to_string),
                serial: d.serial_number().map(str::to_string),
                fido: d.usage_page() == FIDO_USAGE_PAGE,
            }));
        }
    }
    if usb {
        found.extend(usb_devices(Path::new(USB_DEVICES)));
    }
    Ok(merge(found))
}

/// The USB devices sysfs lists under `dir` (one directory per device, with
/// `idVendor` and `idProduct` in hex).
fn usb_devices(dir: &Path) -> Vec<Device> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let read = |d: &Path, f: &str| {
        fs::read_to_string(d.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    entries
        .flatten()
        .filter_map(|e| {
            let d = e.path();
            let hex = |f: &str| read(&d, f).and_then(|v| u16::from_str_radix(&v, 16).ok());
            Some(Device {
                vendor_id: hex("idVendor")?,
                product_id: hex("idProduct")?,
                manufacturer: read(&d, "manufacturer"),
                product: read(&d, "product"),
                serial: read(&d, "serial"),
                fido: false,
            })
        })
        .collect()
}

/// Security devices only, one entry per device (a device shows once per
/// HID interface and once more in sysfs), in a stable order.
fn merge(found: Vec<Device>) -> Vec<Device> {
    let mut by_id: BTreeMap<(u16, u16, Option<String>), Device> = BTreeMap::new();
    for d in found {
        let key = (d.vendor_id, d.product_id, d.serial.clone());
        match by_id.get_mut(&key) {
            Some(seen) => {
                seen.fido |= d.fido;
                seen.manufacturer = seen.manufacturer.take().or(d.manufacturer);
                seen.product = seen.product.take().or(d.product);
            }
            None => {
                by_id.insert(key, d);
            }
        }
    }
    by_id.into_values().filter(Device::listed).collect()
}

/// What `keyward devices` prints: standard output, standard error, and
/// whether it succeeded.
pub fn report(scan: Result<Vec<Device>, Unavailable>) -> (String, String, bool) {
    match scan {
        Err(Unavailable::NoInterface) => (
            String::new(),
            format!(
                "keyward: cannot list USB devices: neither {HIDRAW_CLASS} nor {USB_DEVICES} \
                 exists (the kernel's hidraw driver is not loaded, or /sys is not mounted \
                 here, as in some containers)\n"
            ),
            false,
        ),
        Ok(devices) if devices.is_empty() => (
            "no USB security devices found\n".to_string(),
            String::new(),
            true,
        ),
        Ok(devices) => {
            let mut out = String::new();
            for d in devices {
                out.push_str(&format!(
                    "{:04x}:{:04x}  {}  {}{}{}\n",
                    d.vendor_id,
                    d.product_id,
                    d.maker(),
                    d.product.as_deref().unwrap_or("(no product name)"),
                    d.serial
                        .as_deref()
                        .map(|s| format!("  serial {s}"))
                        .unwrap_or_default(),
                    if d.fido { "  FIDO" } else { "" },
                ));
            }
            (out, String::new(), true)
        }
    }
}

/// `keyward --json devices`: an array of devices (ids as 4 hex digits,
/// as `lsusb` writes them), or the error document; standard error and
/// success as [`report`].
pub fn report_json(scan: Result<Vec<Device>, Unavailable>) -> (String, String, bool) {
    match scan {
        Err(e) => {
            let (_, err, ok) = report(Err(e));
            let message = err.trim_start_matches("keyward: ").trim_end().to_owned();
            let doc = crate::json::error_document(
                "Unavailable",
                &message,
                crate::admin::Exit::Error.code(),
            );
            (crate::render::json(&doc), err, ok)
        }
        Ok(devices) => {
            let listed: Vec<serde_json::Value> = devices
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "vendor_id": format!("{:04x}", d.vendor_id),
                        "product_id": format!("{:04x}", d.product_id),
                        "maker": d.maker(),
                        "product": d.product,
                        "serial": d.serial,
                        "fido": d.fido,
                    })
                })
                .collect();
            (crate::render::json(&listed), String::new(), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_an_array_of_devices_or_the_error_document() {
        let (out, err, ok) = report_json(Ok(vec![device(0x1050, 0x0407, Some("123"), true)]));
        assert!(ok && err.is_empty());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["vendor_id"], "1050");
        assert_eq!(v[0]["product_id"], "0407");
        assert_eq!(v[0]["serial"], "123");
        assert_eq!(v[0]["fido"], true);
        let (out, _, ok) = report_json(Ok(vec![]));
        assert!(ok);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            serde_json::json!([])
        );
        let (out, err, ok) = report_json(Err(Unavailable::NoInterface));
        assert!(!ok && err.starts_with("keyward: cannot list USB devices"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["error"]["kind"], "unavailable");
        assert_eq!(v["error"]["exit_code"], 1);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot list USB devices"));
    }

    fn device(vendor_id: u16, product_id: u16, serial: Option<&str>, fido: bool) -> Device {
        Device {
            vendor_id,
            product_id,
            manufacturer: None,
            product: Some("key".into()),
            serial: serial.map(str::to_string),
            fido,
        }
    }

    #[test]
    fn known_vendors_are_named() {
        assert_eq!(vendor_name(0x1050), Some("Yubico (YubiKey)"));
        assert_eq!(vendor_name(0x20a0), Some("Nitrokey"));
        assert_eq!(vendor_name(0x0529), Some("SafeNet / Thales (eToken)"));
        assert_eq!(vendor_name(0x046d), None, "Logitech makes mice");
    }

    #[test]
    fn only_security_devices_are_listed_once_each() {
        let found = vec![
            device(0x1050, 0x0407, Some("123"), false),
            device(0x1050, 0x0407, Some("123"), true),
            device(0x046d, 0xc52b, None, false),
            device(0x1234, 0x0001, None, true),
        ];
        let listed = merge(found);
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.iter().all(|d| d.vendor_id != 0x046d));
        let yubikey = listed
            .iter()
            .find(|d| d.vendor_id == 0x1050)
            .expect("the YubiKey");
        assert!(yubikey.fido, "its FIDO interface is merged in");
        let (out, err, ok) = report(Ok(listed));
        assert!(ok && err.is_empty());
        assert!(
            out.contains("1050:0407  Yubico (YubiKey)  key  serial 123  FIDO"),
            "{out}"
        );
        assert!(out.contains("1234:0001  vendor 1234  key  FIDO"), "{out}");
    }

    #[test]
    fn none_and_unavailable_are_said_plainly() {
        let (out, err, ok) = report(Ok(Vec::new()));
        assert_eq!(
            (out.as_str(), err.as_str(), ok),
            ("no USB security devices found\n", "", true)
        );
        let (out, err, ok) = report(Err(Unavailable::NoInterface));
        assert!(!ok && out.is_empty());
        assert!(
            err.contains("cannot list USB devices") && err.contains("hidraw"),
            "{err}"
        );
    }

    #[test]
    fn sysfs_usb_devices_are_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = dir.path().join("1-1");
        fs::create_dir(&dev).expect("mkdir");
        fs::write(dev.join("idVendor"), "0529\n").expect("write");
        fs::write(dev.join("idProduct"), "0620\n").expect("write");
        fs::write(dev.join("product"), "Token JC\n").expect("write");
        // A hub: no ids of its own, not a device.
        fs::create_dir(dir.path().join("usb1-port1")).expect("mkdir");
        let found = usb_devices(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].vendor_id, found[0].product_id), (0x0529, 0x0620));
        assert_eq!(found[0].product.as_deref(), Some("Token JC"));
    }
}
