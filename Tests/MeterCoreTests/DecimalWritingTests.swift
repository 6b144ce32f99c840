import NIOCore
import Testing

@testable import MeterCore

/// Acks and error lines spell their numbers straight into the connection's buffer (``ByteBuffer/writeDecimal(_:)``).
@Suite struct DecimalWritingTests {
    @Test func numbersAreSpelledAsStringSpellsThem() {
        var random = SystemRandomNumberGenerator()
        var values: [Int64] = [0, 1, 9, 10, 11, 99, 100, 101, 999_999, 1_000_000, -1, -10, Int64.max, Int64.min, Int64.max - 1, Int64.min + 1]
        for exponent in 1...18 {
            let power = (0..<exponent).reduce(Int64(1)) { value, _ in value * 10 }
            values += [power - 1, power, power + 1, -power]
        }
        values += (0..<1_000).map { _ in Int64.random(in: .min ... .max, using: &random) }
        for value in values {
            var buffer = ByteBufferAllocator().buffer(capacity: 0)
            buffer.writeStaticString("seq=")
            buffer.writeDecimal(value)
            buffer.writeStaticString(";")
            #expect(buffer.readString(length: buffer.readableBytes) == "seq=\(value);")
        }
    }
}
