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
