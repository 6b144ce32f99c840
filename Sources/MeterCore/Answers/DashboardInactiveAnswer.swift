/// The dashboard's `/api/inactive` answer: the inactive meters of a region (or all), flagged
/// ones first, then those never heard from.
///
/// Not the status socket's shape (``InactiveMetersAnswer``): the dashboard's meters name their
/// last reading `last_reading`, and a meter never heard from has no `silent_since`.
package struct DashboardInactiveAnswer: Codable, Sendable, Equatable {
    package var region: String?
    /// Every inactive meter of the region, listed or not.
    package var count: Int
    package var meters: [Meter]

    /// One inactive meter; also the entries of ``LivenessMonitor/inactiveJSON(limit:)``.
    package struct Meter: Codable, Sendable, Equatable {
        package var meter: String
        package var customerID: Int64?
        package var region: String
        /// RFC 3339; `nil` for a meter never heard from.
        package var silentSince: String?
        /// RFC 3339 receive time of its last reading; `nil` if it never reported.
        package var lastReading: String?

        package init(meter: String, customerID: Int64?, region: String, silentSinceMs: Int64?, lastReceivedMs: Int64?) {
            self.meter = meter
            self.customerID = customerID
            self.region = region
            self.silentSince = silentSinceMs.map { RFC3339.format(millisecondsSinceEpoch: $0) }
            self.lastReading = lastReceivedMs.map { RFC3339.format(millisecondsSinceEpoch: $0) }
        }

        enum CodingKeys: String, CodingKey {
            case meter
            case customerID = "customer_id"
            case region
            case silentSince = "silent_since"
            case lastReading = "last_reading"
        }
    }
}
