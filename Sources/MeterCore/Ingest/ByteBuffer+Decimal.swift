import NIOCore

extension ByteBuffer {
    /// Writes `value` in decimal, as `String(value)` spells it, without making the `String`: a
    /// steady fleet gets an ack line, and so a number, per reading.
    package mutating func writeDecimal(_ value: Int64) {
        // 19 digits and a sign: Int64.min.
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: 20) { output in
            var magnitude = value.magnitude
            var digits = 1
            var rest = magnitude
            while rest >= 10 {
                rest /= 10
                digits += 1
            }
            let length = (value < 0 ? 1 : 0) + digits
            if value < 0 { output[0] = UInt8(ascii: "-") }
            var position = length
            repeat {
                position -= 1
                output[position] = UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            return length
        }
    }
}
