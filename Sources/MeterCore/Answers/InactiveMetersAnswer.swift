/// The status socket's `inactive` answer (SPEC.md section 6): how many meters are inactive, and
/// the longest silent of them with the time each went silent.
package struct InactiveMetersAnswer: Codable, Sendable, Equatable {
    /// Every inactive meter, listed or not.
    package var count: Int
    /// Whether `meters` lists fewer than `count`.
    package var truncated: Bool
    package var meters: [Meter]

    /// One inactive meter.
    package struct Meter: Codable, Sendable, Equatable {
        package var meter: String
        package var customerID: Int64?
        package var region: String
        /// RFC 3339; `nil` for a meter never heard from that the liveness sweep has not flagged yet.
        package var silentSince: String?
        package var silentForS: Int64?
        /// RFC 3339 receive time of its last reading; `nil` if it never reported.
        package var lastReceived: String?

        enum CodingKeys: String, CodingKey {
            case meter
            case customerID = "customer_id"
            case region
            case silentSince = "silent_since"
            case silentForS = "silent_for_s"
            case lastReceived = "last_received"
        }
    }
}

extension InactiveMetersAnswer {
    /// The answer for the inactive meters the operator queries found, as of `nowMs`.
    package init(_ inactive: InactiveMeters, nowMs: Int64) {
        self.init(
            count: inactive.count, truncated: inactive.count > inactive.meters.count,
            meters: inactive.meters.map { meter in
                Meter(
                    meter: meter.meter, customerID: meter.customerID, region: meter.region,
                    silentSince: meter.silentSinceMs.map { RFC3339.format(millisecondsSinceEpoch: $0) },
                    silentForS: meter.silentSinceMs.map { max(0, (nowMs - $0) / 1000) },
                    lastReceived: meter.lastReceivedMs.map { RFC3339.format(millisecondsSinceEpoch: $0) })
            })
    }
}
