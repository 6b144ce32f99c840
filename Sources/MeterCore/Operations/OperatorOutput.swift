import Foundation

/// An answer of the status socket, parsed for `meterctl`'s readable output.
package enum OperatorAnswer {
    case value([String: Any])
    /// The daemon answered `{"error":…}`.
    case error(code: String, detail: String)

    /// Parses one answer line; `nil` if it is not a JSON object.
    package init?(line: String) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) as? [String: Any] else {
            return nil
        }
        if let code = object["error"] as? String {
            self = .error(code: code, detail: object["detail"] as? String ?? code)
        } else {
            self = .value(object)
        }
    }
}

/// Renders status socket answers as the tables `meterctl` prints by default.
package enum OperatorOutput {
    /// `meterctl status`.
    package static func status(_ object: [String: Any]) -> String {
        func number(_ key: String) -> String { Self.text(object[key]) }
        var rows: [(String, String)] = []
        rows.append(("version", number("version")))
        rows.append(("uptime", Self.duration(seconds: object["uptime_s"] as? Double ?? 0)))
        rows.append(("connections", number("connections")))
        rows.append(("readings", "\(number("readings_total")) (\(number("readings_per_s"))/s)"))
        rows.append(("acks", number("acks_total")))
        rows.append(("duplicates", number("duplicates_total")))
        var rejects = number("rejects_total")
        if let codes = object["rejects_by_code"] as? [String: Any] {
            let nonzero = codes.compactMap { key, value -> String? in
                guard let count = value as? Double, count > 0 else { return nil }
                return "\(key) \(Self.text(count))"
            }.sorted()
            if !nonzero.isEmpty { rejects += " (" + nonzero.joined(separator: ", ") + ")" }
        }
        rows.append(("rejects", rejects))
        rows.append(("queue depth", number("queue_depth")))
        rows.append(("last commit", (object["last_commit_age_ms"] as? Double).map { "\(Self.text($0)) ms ago" } ?? "never"))
        rows.append(("database", Self.bytes(object["db_bytes"] as? Double ?? 0)))
        if let latency = object["latency_ms"] as? [String: Any] {
            rows.append(("latency p50 / p99", "\(Self.milliseconds(latency["p50"])) / \(Self.milliseconds(latency["p99"]))"))
        }
        if let meters = object["meters"] as? [String: Any] {
            rows.append(("meters", "active \(Self.text(meters["active"])), inactive \(Self.text(meters["inactive"])), faulty \(Self.text(meters["faulty"]))"))
        }
        if let writer = object["writer"] as? [String: Any] {
            rows.append(("writer", (writer["healthy"] as? Bool ?? true) ? "healthy" : "FAILING: \(Self.text(writer["failure"]))"))
        }
        return Self.keyValues(rows)
    }

    /// `meterctl inactive`.
    package static func inactive(_ object: [String: Any]) -> String {
        let meters = object["meters"] as? [[String: Any]] ?? []
        let count = Self.text(object["count"])
        guard !meters.isEmpty else { return "No inactive meters.\n" }
        var out = Self.table(headers: ["METER", "CUSTOMER", "REGION", "SILENT SINCE", "SILENT FOR"], rows: meters.map { meter in
            [Self.text(meter["meter"]), Self.text(meter["customer_id"]), Self.text(meter["region"]),
             meter["silent_since"] as? String ?? "never reported",
             (meter["silent_for_s"] as? Double).map { Self.duration(seconds: $0) } ?? "-"]
        })
        out += (object["truncated"] as? Bool ?? false) ? "\(meters.count) of \(count) inactive meters shown.\n" : "\(count) inactive meters.\n"
        return out
    }

    /// Any other answer (`meter`, `kpi`, `snapshot`): scalars as `key  value`, lists of
    /// objects as tables, nested objects with dotted keys.
    package static func generic(_ object: [String: Any], order: [String]? = nil) -> String {
        var rows: [(String, String)] = []
        var tables: [(String, String)] = []
        func walk(_ value: Any, key: String) {
            switch value {
            case let nested as [String: Any]:
                for sub in nested.keys.sorted() { walk(nested[sub]!, key: key.isEmpty ? sub : "\(key).\(sub)") }
            case let list as [Any] where list.allSatisfy({ $0 is [String: Any] }) && !list.isEmpty:
                let objects = list.compactMap { $0 as? [String: Any] }
                var headers: [String] = []
                for object in objects { for header in object.keys where !headers.contains(header) { headers.append(header) } }
                if let first = objects.first { headers = Self.orderedKeys(first) + headers.filter { first[$0] == nil } }
                tables.append((key, Self.table(headers: headers.map { $0.uppercased() },
                                               rows: objects.map { object in headers.map { Self.text(object[$0]) } })))
            case let list as [Any]:
                rows.append((key, list.isEmpty ? "(none)" : list.map { Self.text($0) }.joined(separator: ", ")))
            default:
                rows.append((key, Self.text(value)))
            }
        }
        for key in order ?? object.keys.sorted() {
            if let value = object[key] { walk(value, key: key) }
        }
        var out = Self.keyValues(rows)
        for (title, table) in tables { out += "\n\(title):\n\(table)" }
        return out
    }

    /// Keys of an answer object in a stable, readable order (the daemon's order is not kept by
    /// JSONSerialization, so well-known leading keys go first).
    private static func orderedKeys(_ object: [String: Any]) -> [String] {
        let leading = ["meter", "customer_id", "region", "month", "technician_id", "name"]
        return leading.filter { object[$0] != nil } + object.keys.filter { !leading.contains($0) }.sorted()
    }

    /// Aligned `key  value` lines.
    package static func keyValues(_ rows: [(String, String)]) -> String {
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n") + "\n"
    }

    /// A table with a header row and aligned columns.
    package static func table(headers: [String], rows: [[String]]) -> String {
        var widths = headers.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(headers)] + rows.map(line)).joined(separator: "\n") + "\n"
    }

    /// A JSON value as text: integers without `.0`, `null` as `-`.
    package static func text(_ value: Any?) -> String {
        switch value {
        case nil, is NSNull: return "-"
        case let number as NSNumber where Self.isBoolean(number): return number.boolValue ? "yes" : "no"
        case let number as NSNumber: return Self.number(number.doubleValue)
        case let string as String: return string
        case let list as [Any]: return list.map { Self.text($0) }.joined(separator: ", ")
        case let object as [String: Any]: return object.keys.sorted().map { "\($0)=\(Self.text(object[$0]))" }.joined(separator: " ")
        default: return "\(value!)"
        }
    }

    /// JSONSerialization gives NSNumber for numbers and booleans alike; booleans have their own class.
    private static func isBoolean(_ number: NSNumber) -> Bool {
        type(of: number) == type(of: NSNumber(value: true))
    }

    private static func number(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.2f", value)
    }

    private static func milliseconds(_ value: Any?) -> String {
        guard let number = value as? Double else { return "-" }
        return "\(Self.number(number)) ms"
    }

    /// `1h 02m 03s`.
    package static func duration(seconds: Double) -> String {
        let total = Int(seconds)
        let (days, hours, minutes, secs) = (total / 86_400, total % 86_400 / 3600, total % 3600 / 60, total % 60)
        if days > 0 { return "\(days)d \(hours)h \(String(format: "%02d", minutes))m" }
        if hours > 0 { return "\(hours)h \(String(format: "%02d", minutes))m \(String(format: "%02d", secs))s" }
        if minutes > 0 { return "\(minutes)m \(String(format: "%02d", secs))s" }
        return "\(secs)s"
    }

    private static func bytes(_ value: Double) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var size = value
        var unit = 0
        while size >= 1024, unit < units.count - 1 {
            size /= 1024
            unit += 1
        }
        return unit == 0 ? "\(Int(size)) B" : String(format: "%.1f %@", size, units[unit])
    }
}
