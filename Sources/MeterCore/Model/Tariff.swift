/// Prices live readings: revenue = kWh × the rate of the meter's region (SPEC.md section 4).
package struct Tariff: Sendable, Equatable {
    /// Currency units per kWh where no regional rate is set.
    package var defaultRate: Double
    /// Currency units per kWh by region name.
    package var regionRates: [String: Double]

    package init(defaultRate: Double = 0.15, regionRates: [String: Double] = [:]) {
        self.defaultRate = defaultRate
        self.regionRates = regionRates
    }

    package func rate(forRegion region: String) -> Double {
        self.regionRates[region] ?? self.defaultRate
    }
}

/// What to do with a reading from a meter the company data does not know.
package enum UnknownMeterPolicy: String, Sendable, CaseIterable {
    /// Register it with no customer in the region `Unassigned`, so no reading is lost.
    case register
    /// Answer `unknown_meter` and quarantine the line.
    case reject
}

extension Region {
    package static let unassigned = "Unassigned"
}

/// Namespace for region names.
package enum Region {}
