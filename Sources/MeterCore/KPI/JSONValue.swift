/// A JSON value with object keys in the order they were built: the KPI document's key order is part
/// of its readability, and `null` must be written out, not omitted.
package indirect enum JSONValue: Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    /// A number, or `null` when there is none.
    package static func number(_ value: Double?) -> JSONValue {
        guard let value, value.isFinite else { return .null }
        return .number(value)
    }

    /// Compact JSON text.
    package var text: String {
        var out = ""
        self.write(to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .number(let value):
            if !value.isFinite {
                out += "null"
            } else if value == value.rounded(), abs(value) < 1e15 {
                out += String(Int64(value))
            } else {
                out += "\(value)"
            }
        case .string(let value): out += JSONText.quoted(value)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(to: &out)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (index, (key, value)) in members.enumerated() {
                if index > 0 { out += "," }
                out += JSONText.quoted(key)
                out += ":"
                value.write(to: &out)
            }
            out += "}"
        }
    }
}

/// Latency histogram buckets: exact below 32 ms, then 16 per power of two (about 6 % wide).
package enum LatencyBuckets {
    package static func bucket(ofMilliseconds value: Int64) -> Int {
        let v = max(0, value)
        if v < 32 { return Int(v) }
        let exponent = 63 - v.leadingZeroBitCount
        let sub = Int((v >> (exponent - 4)) & 15)
        return 32 + (exponent - 5) * 16 + sub
    }

    /// Lowest and one-past-highest milliseconds of a bucket.
    package static func range(of bucket: Int) -> (low: Int64, high: Int64) {
        if bucket < 32 { return (Int64(bucket), Int64(bucket) + 1) }
        let exponent = (bucket - 32) / 16 + 5
        let sub = Int64((bucket - 32) % 16)
        let width = Int64(1) << (exponent - 4)
        let low = (Int64(1) << exponent) + sub * width
        return (low, low + width)
    }

    /// The value a bucket stands for in percentiles: exact below 32 ms, else its middle.
    package static func value(of bucket: Int) -> Double {
        let range = self.range(of: bucket)
        return bucket < 32 ? Double(range.low) : Double(range.low + range.high - 1) / 2
    }
}
