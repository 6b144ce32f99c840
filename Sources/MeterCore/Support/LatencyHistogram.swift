/// A log-linear histogram of durations: exact below 32, then 32 sub-buckets per power of two, so a
/// quantile is within about 3 % of the true value, in a fixed 1,440-slot array whatever the count.
///
/// The unit is the caller's: `meter-sim` records ack latencies in microseconds, the status socket's
/// ``LatencyWindow`` reading latencies in milliseconds.
package struct LatencyHistogram: Sendable, Equatable {
    private static let subBits = 5
    private static let subCount = 1 << subBits
    private static let maximumExponent = 44  // 2^44 µs ≈ 200 days; larger values share the last slot

    private var counts = [Int](repeating: 0, count: (LatencyHistogram.maximumExponent + 1) * LatencyHistogram.subCount)
    package private(set) var count = 0
    package private(set) var maximum: UInt64 = 0
    private var sum: Double = 0

    package init() {}

    private static func index(of value: UInt64) -> Int {
        if value < UInt64(subCount) { return Int(value) }
        let exponent = 63 - value.leadingZeroBitCount  // ≥ subBits
        let shift = exponent - subBits
        let sub = Int((value >> UInt64(shift)) & UInt64(subCount - 1))
        return min((shift + 1) * subCount + sub, (maximumExponent + 1) * subCount - 1)
    }

    /// The largest value a slot holds.
    private static func upperBound(ofIndex index: Int) -> UInt64 {
        if index < subCount { return UInt64(index) }
        let shift = index / subCount - 1
        let sub = UInt64(index % subCount)
        return ((UInt64(subCount) + sub + 1) << UInt64(shift)) - 1
    }

    package mutating func record(_ value: UInt64) {
        self.counts[Self.index(of: value)] += 1
        self.count += 1
        self.sum += Double(value)
        self.maximum = max(self.maximum, value)
    }

    package mutating func merge(_ other: LatencyHistogram) {
        for index in self.counts.indices { self.counts[index] += other.counts[index] }
        self.count += other.count
        self.sum += other.sum
        self.maximum = max(self.maximum, other.maximum)
    }

    /// The value at quantile `q` (0...1): the largest value its slot holds (never above the largest
    /// value recorded), or `nil` when empty.
    package func quantile(_ q: Double) -> UInt64? {
        guard self.count > 0 else { return nil }
        let rank = max(1, Int((Double(self.count) * q).rounded(.up)))
        var seen = 0
        for (index, count) in self.counts.enumerated() where count > 0 {
            seen += count
            if seen >= rank { return min(Self.upperBound(ofIndex: index), self.maximum) }
        }
        return self.maximum
    }

    package var mean: Double? { self.count > 0 ? self.sum / Double(self.count) : nil }
}
