import Foundation

/// An answer of the status socket, decoded for `meterctl`'s readable output.
package enum OperatorAnswer<Value: Decodable> {
    case value(Value)
    /// The daemon answered `{"error":…}`.
    case error(code: String, detail: String)

    /// Decodes one answer line: the daemon's error, or a `Value`; `nil` if it is neither.
    package init?(line: String) {
        let data = Data(line.utf8)
        let decoder = JSONDecoder()
        if let error = try? decoder.decode(ErrorAnswer.self, from: data) {
            self = .error(code: error.error, detail: error.detail ?? error.error)
        } else if let value = try? decoder.decode(Value.self, from: data) {
            self = .value(value)
        } else {
            return nil
        }
    }
}

/// Renders status socket answers as the tables `meterctl` prints by default.
package enum OperatorOutput {
    /// `meterctl status`.
    package static func status(_ status: StatusAnswer) -> String {
        var rows: [(String, String)] = []
        rows.append(("version", status.version))
        rows.append(("uptime", Self.duration(seconds: Double(status.uptimeS))))
        rows.append(("connections", "\(status.connections)"))
        rows.append(("readings", "\(status.readingsTotal) (\(Self.number(status.readingsPerS))/s)"))
        rows.append(("acks", "\(status.acksTotal)"))
        rows.append(("duplicates", "\(status.duplicatesTotal)"))
        var rejects = "\(status.rejectsTotal)"
        let nonzero = status.rejectsByCode.counts.filter { $0.count > 0 }.map { "\($0.code) \($0.count)" }.sorted()
        if !nonzero.isEmpty { rejects += " (" + nonzero.joined(separator: ", ") + ")" }
        rows.append(("rejects", rejects))
        rows.append(("queue depth", "\(status.queueDepth)"))
        rows.append(("last commit", status.lastCommitAgeMs.map { "\($0) ms ago" } ?? "never"))
        if let failures = status.commitFailuresTotal, failures > 0 { rows.append(("failed commits", "\(failures) since start (retried)")) }
        rows.append(("database", Self.bytes(Double(status.dbBytes))))
        rows.append(("latency p50 / p99", "\(Self.milliseconds(status.latencyMs.p50)) / \(Self.milliseconds(status.latencyMs.p99))"))
        let meters = status.meters
        rows.append(("meters", "active \(Self.text(meters.active)), inactive \(Self.text(meters.inactive)), faulty \(Self.text(meters.faulty))"))
        rows.append(("writer", status.writer.healthy ? "healthy" : "FAILING: \(Self.text(status.writer.failure))"))
        if let since = status.writer.storeUnreachableSince { rows.append(("store", "UNREACHABLE since \(since); meters told busy")) }
        return Self.keyValues(rows)
    }

    /// `meterctl alerts`.
    package static func alerts(_ list: AlertListAnswer, filter: AlertFilter) -> String {
        guard !list.alerts.isEmpty else {
            return filter == .resolved ? "No resolved alerts.\n" : (filter == .firing ? "No alerts firing.\n" : "No alerts.\n")
        }
        var out = Self.table(
            headers: ["STATE", "RULE", "SUBJECT", "SINCE", "FIRED", "DETAIL"],
            rows: list.alerts.map { alert in [alert.state, alert.rule, alert.subject, alert.since, alert.firedAt, alert.detail] })
        out += "\(list.alerts.count) alerts shown, \(list.firing) firing.\n"
        return out
    }

    /// `meterctl inactive`.
    package static func inactive(_ inactive: InactiveMetersAnswer) -> String {
        guard inactive.count > 0 else { return "No inactive meters.\n" }
        // `--limit 0` asks for the count alone.
        guard !inactive.meters.isEmpty else { return "\(inactive.count) inactive meters (none listed).\n" }
        var out = Self.table(
            headers: ["METER", "CUSTOMER", "REGION", "SILENT SINCE", "SILENT FOR"],
            rows: inactive.meters.map { meter in
                [
                    meter.meter, Self.text(meter.customerID), meter.region, meter.silentSince ?? "never reported",
                    meter.silentForS.map { Self.duration(seconds: Double($0)) } ?? "-",
                ]
            })
        out += inactive.truncated ? "\(inactive.meters.count) of \(inactive.count) inactive meters shown.\n" : "\(inactive.count) inactive meters.\n"
        return out
    }

    /// `meterctl meter ID`: `key  value` lines, nested figures with dotted keys; integers as integers.
    package static func meter(_ meter: MeterDetailAnswer) -> String {
        var rows: [(String, String)] = [
            ("meter", meter.meter), ("customer_id", Self.text(meter.customerID)), ("region", meter.region), ("state", meter.state),
            ("faulty", meter.faulty ? "yes" : "no"), ("inactive_since", Self.text(meter.inactiveSince)), ("first_seen", Self.text(meter.firstSeen)),
        ]
        if let last = meter.lastReading {
            rows += [
                ("last_reading.fault", Self.text(last.fault)), ("last_reading.received", Self.text(last.received)),
                ("last_reading.seq", Self.text(last.seq)), ("last_reading.status", Self.text(last.status)), ("last_reading.ts", Self.text(last.ts)),
            ]
        } else {
            rows.append(("last_reading", "-"))
        }
        rows += [
            ("counters.duplicates_total", "\(meter.counters.duplicatesTotal)"), ("counters.faults_total", "\(meter.counters.faultsTotal)"),
            ("counters.readings_total", "\(meter.counters.readingsTotal)"),
        ]
        return Self.keyValues(rows)
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

    /// An optional figure as text, `-` when there is none.
    package static func text(_ value: (some CustomStringConvertible)?) -> String {
        value.map(\.description) ?? "-"
    }

    /// A double as text: whole values without decimals, others with two.
    package static func number(_ value: Double) -> String {
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.2f", value)
    }

    private static func milliseconds(_ value: Int64?) -> String {
        guard let value else { return "-" }
        return "\(value) ms"
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
