import Foundation

/// Renders the KPI document as the readable tables `meterctl kpi` prints.
package enum KPITextReport {
    /// Decodes the document's JSON text, then renders it.
    package static func render(json: String) throws -> String {
        self.render(try JSONDecoder().decode(KPIDocument.self, from: Data(json.utf8)))
    }

    package static func render(_ document: KPIDocument) -> String {
        var out = ""
        let region = document.region ?? "all regions"
        out += "KPIs \(document.period.from)..\(document.period.to), \(region) (generated \(document.generatedAt))\n"

        let meters = document.meters
        out += self.section(
            "Overview",
            [["figure", "value"]] + [
                ["customers", "\(document.totalCustomers)"],
                ["consumption (kWh)", self.decimal(document.totalConsumptionKwh)],
                ["revenue", self.decimal(document.totalRevenue)],
                ["average consumption (kWh per customer-month)", self.decimal(document.averageConsumptionKwh)],
                ["meters active / inactive / faulty", "\(meters.active) / \(meters.inactive) / \(meters.faulty)"],
            ])

        let revenue = Dictionary(document.revenueByRegion.map { ($0.region, $0.revenue) }, uniquingKeysWith: { first, _ in first })
        out += self.section(
            "Consumption and revenue by region",
            [["region", "kWh", "revenue"]]
                + document.consumptionByRegion.map { row in
                    [row.region, self.decimal(row.kwh), self.decimal(revenue[row.region])]
                })
        out += self.section(
            "Top consumers",
            [["#", "customer", "region", "kWh"]]
                + document.topConsumers.enumerated().map { index, row in
                    ["\(index + 1)", "\(row.customerID)", row.region, self.decimal(row.kwh)]
                })
        let trend = Dictionary(document.revenueTrend.map { ($0.month, $0.revenue) }, uniquingKeysWith: { first, _ in first })
        out += self.section(
            "Monthly consumption (revenue trend: 12 months ending at the period's end)",
            [["month", "kWh", "revenue"]]
                + document.monthlyConsumption.map { row in
                    [row.month, self.decimal(row.kwh) + (row.estimated ? " (estimated)" : ""), trend[row.month].map { self.decimal($0) } ?? ""]
                })

        let health = document.meterHealth
        let latency = document.readingLatencyMs
        out += self.section(
            "Meter performance",
            [["figure", "value"]] + [
                ["health good / fair / poor (%)", "\(self.decimal(health.good)) / \(self.decimal(health.fair)) / \(self.decimal(health.poor))"],
                [
                    "reading latency avg / p50 / p95 / p99 (ms)",
                    "\(self.decimal(latency.avg)) / \(self.decimal(latency.p50)) / \(self.decimal(latency.p95)) / \(self.decimal(latency.p99))",
                ],
                ["live readings in the period", "\(latency.count)"],
                [
                    "validation flags " + ValidationRule.allCases.map(\.rawValue).joined(separator: " / "),
                    ValidationRule.allCases.map { "\(document.validationFlags[$0])" }.joined(separator: " / "),
                ],
            ])
        out += self.section(
            "Faulty meters (worst first)",
            [["meter", "customer", "poor months", "faults"]]
                + document.faultyMeters.prefix(20).map { row in
                    [row.meter, row.customerID.map(String.init) ?? "-", "\(row.poorMonths)", "\(row.faults)"]
                })

        out += self.section(
            "Read success (share of installed meters with a reading, per day)",
            [["figure", "value"]] + [
                ["read success rate over the period (%)", self.percent(document.readSuccessRate)],
                ["interval completeness (%)", self.percent(document.intervalCompleteness)],
                ["days judged", "\(document.readSuccessDaily.count)"],
            ])
        out += self.section(
            "Read success by region, worst first",
            [["region", "rate (%)"]]
                + self.worstFirst(document.readSuccessByRegion).map { row in [row.region, self.percent(row.rate)] })
        out += self.section(
            "Read success, last 14 days",
            [["date", "rate (%)"]] + document.readSuccessDaily.suffix(14).map { row in [row.date, self.percent(row.rate)] })
        out += self.section(
            "Lowest interval completeness",
            [["meter", "region", "completeness (%)", "readings", "expected", "interval (s)"]]
                + document.lowestCompletenessMeters.map { row in
                    [
                        row.meter, row.region, self.percent(row.completeness), "\(row.readings)", self.decimal(row.expectedReadings),
                        self.decimal(row.intervalSeconds),
                    ]
                })

        let payments = document.paymentStatus
        let satisfaction = document.satisfaction
        let customers = document.newVsReturning
        let complaints = document.complaints
        out += self.section(
            "Revenue and customers",
            [["figure", "value"]] + [
                ["bills paid (count / amount)", "\(payments.paid.count) / \(self.decimal(payments.paid.amount))"],
                ["bills unpaid (count / amount)", "\(payments.unpaid.count) / \(self.decimal(payments.unpaid.amount))"],
                ["satisfaction (average of n)", "\(self.decimal(satisfaction.average)) of \(satisfaction.count)"],
                ["satisfaction scores 1 / 2 / 3 / 4 / 5", (1...5).map { "\(satisfaction.distribution[score: $0])" }.joined(separator: " / ")],
                ["customers new / returning", "\(customers.new) / \(customers.returning)"],
                ["complaints in the last month received / resolved", "\(complaints.received) / \(complaints.resolved)"],
            ])

        let maintenance = document.maintenance
        out += self.section(
            "Operations",
            [["figure", "value"]] + [
                ["installation time (days)", self.decimal(document.installationTimeDays)],
                ["maintenance received / processed / open", "\(maintenance.received) / \(maintenance.processed) / \(maintenance.open)"],
                ["maintenance resolution (days)", self.decimal(maintenance.averageResolutionDays)],
            ])
        out += self.section(
            "Technicians",
            [["id", "name", "installations", "maintenance jobs", "resolution days"]]
                + document.technicians.map { row in
                    [
                        "\(row.technicianID)", row.name ?? "-", "\(row.installations)", "\(row.maintenanceJobs)",
                        self.decimal(row.averageResolutionDays),
                    ]
                })
        return out
    }

    /// A 0–1 share in percent.
    private static func percent(_ value: Double?) -> String {
        self.decimal(value.map { $0 * 100 })
    }

    /// Regions by rate, lowest first (no rate last), ties by name.
    private static func worstFirst(_ regions: [KPIDocument.RegionReadSuccess]) -> [KPIDocument.RegionReadSuccess] {
        regions.sorted { lhs, rhs in
            let left = lhs.rate ?? .infinity, right = rhs.rate ?? .infinity
            return left != right ? left < right : lhs.region < rhs.region
        }
    }

    private static func decimal(_ value: Double?) -> String {
        guard let value else { return "-" }
        return String(format: "%.2f", value)
    }

    /// A titled table: the first row is the header; numbers align right.
    private static func section(_ title: String, _ rows: [[String]]) -> String {
        var out = "\n\(title)\n"
        guard rows.count > 1 else { return out + "  (none)\n" }
        let widths = (0..<rows[0].count).map { column in rows.map { $0.indices.contains(column) ? $0[column].count : 0 }.max() ?? 0 }
        for (index, row) in rows.enumerated() {
            let cells = row.enumerated().map { column, cell -> String in
                let padding = String(repeating: " ", count: widths[column] - cell.count)
                let numeric = index > 0 && column > 0 && cell.first.map { $0.isNumber || $0 == "-" } == true
                return numeric ? padding + cell : cell + padding
            }
            out += "  " + cells.joined(separator: "  ") + "\n"
            if index == 0 { out += "  " + widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n" }
        }
        return out
    }
}
