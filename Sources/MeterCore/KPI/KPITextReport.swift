import Foundation

/// Renders the KPI document (its JSON text) as the readable tables `meterctl kpi` prints.
package enum KPITextReport {
    package static func render(json: String) throws -> String {
        guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else {
            throw KPIError.invalidPeriod("the KPI answer is not a JSON object")
        }
        return self.render(object)
    }

    static func render(_ document: [String: Any]) -> String {
        var out = ""
        let period = document["period"] as? [String: Any] ?? [:]
        let region = document["region"] as? String ?? "all regions"
        out += "KPIs \(period["from"] as? String ?? "?")..\(period["to"] as? String ?? "?"), \(region) (generated \(document["generated_at"] as? String ?? "?"))\n"

        let meters = document["meters"] as? [String: Any] ?? [:]
        out += self.section("Overview", [["figure", "value"]] + [
            ["customers", self.integer(document["total_customers"])],
            ["consumption (kWh)", self.decimal(document["total_consumption_kwh"])],
            ["revenue", self.decimal(document["total_revenue"])],
            ["average consumption (kWh per customer-month)", self.decimal(document["average_consumption_kwh"])],
            ["meters active / inactive / faulty",
             "\(self.integer(meters["active"])) / \(self.integer(meters["inactive"])) / \(self.integer(meters["faulty"]))"],
        ])

        let consumption = self.list(document["consumption_by_region"])
        let revenue = Dictionary(self.list(document["revenue_by_region"]).map { ($0["region"] as? String ?? "", $0["revenue"]) },
                                 uniquingKeysWith: { first, _ in first })
        out += self.section("Consumption and revenue by region", [["region", "kWh", "revenue"]] + consumption.map { row in
            let name = row["region"] as? String ?? ""
            return [name, self.decimal(row["kwh"]), self.decimal(revenue[name] ?? nil)]
        })
        out += self.section("Top consumers", [["#", "customer", "region", "kWh"]] + self.list(document["top_consumers"]).enumerated().map { index, row in
            ["\(index + 1)", self.integer(row["customer_id"]), row["region"] as? String ?? "", self.decimal(row["kwh"])]
        })
        let trend = Dictionary(self.list(document["revenue_trend"]).map { ($0["month"] as? String ?? "", $0["revenue"]) },
                               uniquingKeysWith: { first, _ in first })
        out += self.section("Monthly consumption (revenue trend: 12 months ending at the period's end)",
                            [["month", "kWh", "revenue"]] + self.list(document["monthly_consumption"]).map { row in
            let month = row["month"] as? String ?? ""
            return [month, self.decimal(row["kwh"]), trend[month].map { self.decimal($0) } ?? ""]
        })

        let health = document["meter_health"] as? [String: Any] ?? [:]
        let latency = document["reading_latency_ms"] as? [String: Any] ?? [:]
        out += self.section("Meter performance", [["figure", "value"]] + [
            ["health good / fair / poor (%)", "\(self.decimal(health["good"])) / \(self.decimal(health["fair"])) / \(self.decimal(health["poor"]))"],
            ["reading latency avg / p50 / p95 / p99 (ms)",
             "\(self.decimal(latency["avg"])) / \(self.decimal(latency["p50"])) / \(self.decimal(latency["p95"])) / \(self.decimal(latency["p99"]))"],
            ["live readings in the period", self.integer(latency["count"])],
        ])
        out += self.section("Faulty meters (worst first)", [["meter", "customer", "poor months", "faults"]] +
                            self.list(document["faulty_meters"]).prefix(20).map { row in
            [row["meter"] as? String ?? "", self.integer(row["customer_id"]), self.integer(row["poor_months"]), self.integer(row["faults"])]
        })

        let payments = document["payment_status"] as? [String: Any] ?? [:]
        let paid = payments["paid"] as? [String: Any] ?? [:]
        let unpaid = payments["unpaid"] as? [String: Any] ?? [:]
        let satisfaction = document["satisfaction"] as? [String: Any] ?? [:]
        let distribution = satisfaction["distribution"] as? [String: Any] ?? [:]
        let customers = document["new_vs_returning"] as? [String: Any] ?? [:]
        let complaints = document["complaints"] as? [String: Any] ?? [:]
        out += self.section("Revenue and customers", [["figure", "value"]] + [
            ["bills paid (count / amount)", "\(self.integer(paid["count"])) / \(self.decimal(paid["amount"]))"],
            ["bills unpaid (count / amount)", "\(self.integer(unpaid["count"])) / \(self.decimal(unpaid["amount"]))"],
            ["satisfaction (average of n)", "\(self.decimal(satisfaction["average"])) of \(self.integer(satisfaction["count"]))"],
            ["satisfaction scores 1 / 2 / 3 / 4 / 5", (1...5).map { self.integer(distribution[String($0)]) }.joined(separator: " / ")],
            ["customers new / returning", "\(self.integer(customers["new"])) / \(self.integer(customers["returning"]))"],
            ["complaints in the last month received / resolved", "\(self.integer(complaints["received"])) / \(self.integer(complaints["resolved"]))"],
        ])

        let maintenance = document["maintenance"] as? [String: Any] ?? [:]
        out += self.section("Operations", [["figure", "value"]] + [
            ["installation time (days)", self.decimal(document["installation_time_days"])],
            ["maintenance received / processed / open",
             "\(self.integer(maintenance["received"])) / \(self.integer(maintenance["processed"])) / \(self.integer(maintenance["open"]))"],
            ["maintenance resolution (days)", self.decimal(maintenance["average_resolution_days"])],
        ])
        out += self.section("Technicians", [["id", "name", "installations", "maintenance jobs", "resolution days"]] +
                            self.list(document["technicians"]).map { row in
            [self.integer(row["technician_id"]), row["name"] as? String ?? "-", self.integer(row["installations"]),
             self.integer(row["maintenance_jobs"]), self.decimal(row["average_resolution_days"])]
        })
        return out
    }

    private static func list(_ value: Any?) -> [[String: Any]] { value as? [[String: Any]] ?? [] }

    private static func integer(_ value: Any?) -> String {
        guard let number = value as? NSNumber else { return "-" }
        return String(number.int64Value)
    }

    private static func decimal(_ value: Any?) -> String {
        guard let number = value as? NSNumber else { return "-" }
        return String(format: "%.2f", number.doubleValue)
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
