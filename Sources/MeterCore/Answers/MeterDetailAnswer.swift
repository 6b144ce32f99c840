/// The status socket's `meter ID` answer (SPEC.md section 6): one meter's customer, region,
/// state, last reading and counters. Times are RFC 3339; `last_reading` is `null` for a meter that
/// never reported.
package struct MeterDetailAnswer: Codable, Sendable, Equatable {
    package var meter: String
    package var customerID: Int64?
    package var region: String
    /// `active` or `inactive`.
    package var state: String
    package var faulty: Bool
    package var inactiveSince: String?
    package var firstSeen: String?
    package var lastReading: LastReading?
    package var counters: Counters

    enum CodingKeys: String, CodingKey {
        case meter
        case customerID = "customer_id"
        case region, state, faulty
        case inactiveSince = "inactive_since"
        case firstSeen = "first_seen"
        case lastReading = "last_reading"
        case counters
    }

    /// `last_reading`: what the meter last sent and when it arrived.
    package struct LastReading: Codable, Sendable, Equatable {
        package var seq: Int64?
        /// The meter's own timestamp.
        package var ts: String?
        package var received: String?
        /// `good`, `fair` or `poor`.
        package var status: String?
        package var fault: String?
    }

    /// `counters`: since the meter was first seen.
    package struct Counters: Codable, Sendable, Equatable {
        package var readingsTotal: Int64
        package var faultsTotal: Int64
        package var duplicatesTotal: Int64

        enum CodingKeys: String, CodingKey {
            case readingsTotal = "readings_total"
            case faultsTotal = "faults_total"
            case duplicatesTotal = "duplicates_total"
        }
    }
}

extension MeterDetailAnswer {
    /// The answer for a meter's detail as the operator queries read it.
    package init(_ detail: MeterDetail) {
        func time(_ ms: Int64?) -> String? { ms.map { RFC3339.format(millisecondsSinceEpoch: $0) } }
        self.init(
            meter: detail.meter, customerID: detail.customerID, region: detail.region, state: detail.state, faulty: detail.faulty,
            inactiveSince: time(detail.inactiveSinceMs), firstSeen: time(detail.firstSeenMs),
            lastReading: detail.lastReceivedMs == nil
                ? nil
                : LastReading(
                    seq: detail.lastSeq, ts: time(detail.lastTimestampMs), received: time(detail.lastReceivedMs),
                    status: detail.lastStatus?.name, fault: detail.lastFault),
            counters: Counters(readingsTotal: detail.readingsTotal, faultsTotal: detail.faultsTotal, duplicatesTotal: detail.duplicatesTotal))
    }
}
