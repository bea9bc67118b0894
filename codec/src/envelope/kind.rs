//! Reading kinds: the u16 code carried in the binary body and the name used as the key in
//! the JSON form. Unknown codes are carried through untouched (forward compatibility); only
//! code 0 is invalid.

/// A reading kind. [`Kind::from_code`] is the only way to get a canonical value: it never
/// returns `Other` for a code that has a name, so compare kinds by [`Kind::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// 1: CO2 concentration, parts per million.
    Co2Ppm,
    /// 2: air temperature, degrees Celsius.
    TemperatureC,
    /// 3: relative humidity, percent.
    HumidityRhPct,
    /// 4: PM1 particulates, µg/m³.
    Pm1Ugm3,
    /// 5: PM2.5 particulates, µg/m³.
    Pm2_5Ugm3,
    /// 6: PM10 particulates, µg/m³.
    Pm10Ugm3,
    /// 7: battery charge, percent.
    BatteryPct,
    /// 8: battery voltage, volts.
    BatteryV,
    /// 9: air pressure, hectopascal.
    PressureHpa,
    /// 10: VOC index (dimensionless, sensor-defined scale).
    VocIndex,
    /// 11: noise level, dB(A).
    NoiseDba,
    /// Any other non-zero code: 12..=0x7FFF reserved for future registered kinds,
    /// 0x8000..=0xFFFF vendor-private. JSON name `kind_<decimal code>`.
    Other(u16),
}

/// (code, JSON name, unit) for every registered kind, in code order.
pub const KINDS: [(u16, &str, &str); 11] = [
    (1, "co2_ppm", "ppm"),
    (2, "temperature_c", "°C"),
    (3, "humidity_rh_pct", "% RH"),
    (4, "pm1_ugm3", "µg/m³"),
    (5, "pm2_5_ugm3", "µg/m³"),
    (6, "pm10_ugm3", "µg/m³"),
    (7, "battery_pct", "%"),
    (8, "battery_v", "V"),
    (9, "pressure_hpa", "hPa"),
    (10, "voc_index", "index"),
    (11, "noise_dba", "dB(A)"),
];

/// First code of the vendor-private range.
pub const VENDOR_KIND_START: u16 = 0x8000;

impl Kind {
    /// The kind for a wire code; `None` for the invalid code 0.
    pub fn from_code(code: u16) -> Option<Kind> {
        Some(match code {
            0 => return None,
            1 => Kind::Co2Ppm,
            2 => Kind::TemperatureC,
            3 => Kind::HumidityRhPct,
            4 => Kind::Pm1Ugm3,
            5 => Kind::Pm2_5Ugm3,
            6 => Kind::Pm10Ugm3,
            7 => Kind::BatteryPct,
            8 => Kind::BatteryV,
            9 => Kind::PressureHpa,
            10 => Kind::VocIndex,
            11 => Kind::NoiseDba,
            other => Kind::Other(other),
        })
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Kind::Co2Ppm => 1,
            Kind::TemperatureC => 2,
            Kind::HumidityRhPct => 3,
            Kind::Pm1Ugm3 => 4,
            Kind::Pm2_5Ugm3 => 5,
            Kind::Pm10Ugm3 => 6,
            Kind::BatteryPct => 7,
            Kind::BatteryV => 8,
            Kind::PressureHpa => 9,
            Kind::VocIndex => 10,
            Kind::NoiseDba => 11,
            Kind::Other(c) => c,
        }
    }

    /// The registered JSON name, or `None` for codes without one (use [`Kind::write_name`]).
    pub fn name(self) -> Option<&'static str> {
        let code = self.code();
        KINDS
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|(_, n, _)| *n)
    }

    /// The unit of a registered kind.
    pub fn unit(self) -> Option<&'static str> {
        let code = self.code();
        KINDS
            .iter()
            .find(|(c, _, _)| *c == code)
            .map(|(_, _, u)| *u)
    }

    /// Appends the JSON key: the registered name, or `kind_<decimal code>`.
    pub fn write_name(self, out: &mut Vec<u8>) {
        match self.name() {
            Some(n) => out.extend_from_slice(n.as_bytes()),
            None => {
                out.extend_from_slice(b"kind_");
                write_decimal(u64::from(self.code()), out);
            }
        }
    }

    /// Parses a JSON key. Exactly one spelling is accepted per code, so the JSON form stays
    /// canonical: registered names only for registered codes, and `kind_<n>` (decimal, no
    /// leading zeros, 1..=65535) only for codes without a name.
    pub fn from_name(name: &str) -> Option<Kind> {
        if let Some((code, _, _)) = KINDS.iter().find(|(_, n, _)| *n == name) {
            return Kind::from_code(*code);
        }
        let digits = name.strip_prefix("kind_")?;
        if digits.is_empty()
            || digits.len() > 5
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let code: u16 = digits.parse().ok()?;
        let kind = Kind::from_code(code)?;
        // A registered code must use its name.
        if kind.name().is_some() {
            return None;
        }
        Some(kind)
    }
}

/// Appends the decimal form of `v` without allocating.
pub(crate) fn write_decimal(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(i..).unwrap_or(&[]));
}
