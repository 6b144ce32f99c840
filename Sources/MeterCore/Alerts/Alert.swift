import Foundation

/// What an alert watches (SPEC.md section 11, `[alert]`).
package enum AlertRule: String, Codable, Sendable, CaseIterable, Comparable {
    /// A meter the liveness sweep flagged inactive; subject: the meter id.
    case inactive
    /// A meter faulty over the default KPI period (``MeterRules/isFaulty(faults:poorMonths:)``); subject: the meter id.
    case faulty
    /// A region's read success rate on the last complete day below `read_success_min`; subject: the region.
    case readSuccess = "read_success"
    /// The share of stored readings that raised a validation flag above `flag_rate`; subject: `readings`.
    case validationFlags = "validation_flags"
    /// The writer cannot commit (disk full, database unreachable) or makes no progress; subject: `writer`.
    case writer
    /// The write queue full, meters told busy, for longer than `busy_seconds`; subject: `ingest`.
    case ingestBusy = "ingest_busy"

    package static func < (lhs: AlertRule, rhs: AlertRule) -> Bool {
        Self.allCases.firstIndex(of: lhs)! < Self.allCases.firstIndex(of: rhs)!
    }
}

/// Where an alert stands: it fires while its condition holds and is resolved once it no longer does.
package enum AlertState: String, Codable, Sendable, CaseIterable {
    case firing
    case resolved
}

/// One alert (SPEC.md section 11): `{id, rule, subject, state, since, detail}`, plus when it fired
/// and when it was resolved.
///
/// An alert is one episode of a condition: the same rule and subject firing again after being
/// resolved is a new alert with a new id. The id is `rule:subject:fired_ms`, stable across restarts.
package struct Alert: Sendable, Equatable {
    package var rule: AlertRule
    package var subject: String
    package var state: AlertState
    package var firedMs: Int64
    package var resolvedMs: Int64?
    /// What was seen when the alert last changed, phrased for an operator.
    package var detail: String

    package init(rule: AlertRule, subject: String, state: AlertState = .firing, firedMs: Int64, resolvedMs: Int64? = nil, detail: String) {
        self.rule = rule
        self.subject = subject
        self.state = state
        self.firedMs = firedMs
        self.resolvedMs = resolvedMs
        self.detail = detail
    }

    package var id: String { "\(self.rule.rawValue):\(self.subject):\(self.firedMs)" }

    /// When the alert entered its current state.
    package var sinceMs: Int64 { self.resolvedMs ?? self.firedMs }

    /// The condition it belongs to: one firing alert at most per key.
    package var key: AlertKey { AlertKey(rule: self.rule, subject: self.subject) }

    /// The JSON object SPEC.md section 11 names, as POSTed to webhooks and listed by the API and meterctl.
    package var answer: AlertAnswer {
        AlertAnswer(
            id: self.id, rule: self.rule.rawValue, subject: self.subject, state: self.state.rawValue,
            since: RFC3339.format(millisecondsSinceEpoch: self.sinceMs), detail: self.detail,
            firedAt: RFC3339.format(millisecondsSinceEpoch: self.firedMs),
            resolvedAt: self.resolvedMs.map { RFC3339.format(millisecondsSinceEpoch: $0) })
    }
}

/// A rule and its subject: what de-duplicates alerts.
package struct AlertKey: Hashable, Sendable, Comparable {
    package var rule: AlertRule
    package var subject: String

    package init(rule: AlertRule, subject: String) {
        self.rule = rule
        self.subject = subject
    }

    package static func < (lhs: AlertKey, rhs: AlertKey) -> Bool {
        lhs.rule == rhs.rule ? lhs.subject < rhs.subject : lhs.rule < rhs.rule
    }
}

/// One alert as JSON: what webhooks receive, `/api/alerts` and `meterctl alerts --json` list.
package struct AlertAnswer: Codable, Sendable, Equatable {
    package var id: String
    package var rule: String
    package var subject: String
    /// `firing` or `resolved`.
    package var state: String
    /// RFC 3339: when it entered its current state.
    package var since: String
    package var detail: String
    /// RFC 3339: when it fired.
    package var firedAt: String
    /// RFC 3339: when it was resolved; `nil` while it fires.
    package var resolvedAt: String?

    enum CodingKeys: String, CodingKey {
        case id, rule, subject, state, since, detail
        case firedAt = "fired_at"
        case resolvedAt = "resolved_at"
    }
}

/// The alerts `/api/alerts` and `meterctl alerts` list: the firing ones, then the resolved, newest first.
package struct AlertListAnswer: Codable, Sendable, Equatable {
    /// Alerts firing now, listed or not.
    package var firing: Int
    package var alerts: [AlertAnswer]

    package init(firing: Int, alerts: [AlertAnswer]) {
        self.firing = firing
        self.alerts = alerts
    }
}

extension AlertListAnswer {
    /// What a region-scoped dashboard user may see (SPEC.md section 10): the alerts of their
    /// region's meters and of the region itself. Fleet-wide alerts (the writer, a busy ingest, the
    /// validation flag rate) are about every region, so they stay hidden, as `/api/status` does.
    package func scoped(to region: String, regionOfMeter: (String) async throws -> String?) async rethrows -> AlertListAnswer {
        var regions: [String: String?] = [:]
        var visible: [AlertAnswer] = []
        for alert in self.alerts {
            switch AlertRule(rawValue: alert.rule) {
            case .inactive, .faulty:
                if regions[alert.subject] == nil { regions[alert.subject] = .some(try await regionOfMeter(alert.subject)) }
                if regions[alert.subject] == .some(region) { visible.append(alert) }
            case .readSuccess:
                if alert.subject == region { visible.append(alert) }
            case .validationFlags, .writer, .ingestBusy, nil:
                continue
            }
        }
        return AlertListAnswer(firing: visible.count { $0.state == AlertState.firing.rawValue }, alerts: visible)
    }
}

/// Which alerts a listing asks for.
package enum AlertFilter: String, Sendable, CaseIterable {
    case firing
    case resolved
    case all

    /// The state to select, `nil` for all.
    package var state: AlertState? {
        switch self {
        case .firing: .firing
        case .resolved: .resolved
        case .all: nil
        }
    }
}
