#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one seeded generator of the simulator and the company generator: xoshiro256** seeded through
/// SplitMix64. Fast, and the same seed gives the same numbers on every platform and Swift version
/// (unlike `SystemRandomNumberGenerator`, which cannot be seeded), so the same seed gives the same
/// fleet and the same company files.
package struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: (UInt64, UInt64, UInt64, UInt64)

    package init(seed: UInt64) {
        var splitMix = seed
        func next() -> UInt64 {
            splitMix &+= 0x9E37_79B9_7F4A_7C15
            var z = splitMix
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        self.state = (next(), next(), next(), next())
    }

    package mutating func next() -> UInt64 {
        let result = ((self.state.1 &* 5) << 7 | (self.state.1 &* 5) >> 57) &* 9
        let t = self.state.1 << 17
        self.state.2 ^= self.state.0
        self.state.3 ^= self.state.1
        self.state.1 ^= self.state.2
        self.state.0 ^= self.state.3
        self.state.2 ^= t
        self.state.3 = self.state.3 << 45 | self.state.3 >> 19
        return result
    }

    /// Uniform in `[0, 1)` with 53 bits.
    package mutating func unit() -> Double { Double(self.next() >> 11) * 0x1.0p-53 }

    /// Uniform in `[low, high)`.
    package mutating func uniform(_ low: Double, _ high: Double) -> Double { low + (high - low) * self.unit() }

    /// Uniform integer in `0..<bound` (Lemire's multiply-high; the bias is below 2⁻⁶⁴ × bound).
    package mutating func below(_ bound: Int) -> Int {
        Int(self.next().multipliedFullWidth(by: UInt64(bound)).high)
    }

    /// True with probability `p`; draws nothing when `p` is 0, so a fault that is off costs nothing.
    package mutating func chance(_ p: Double) -> Bool {
        p > 0 && self.unit() < p
    }

    /// Standard normal (Box–Muller).
    package mutating func normal() -> Double {
        let u1 = max(self.unit(), 1e-300)
        let u2 = self.unit()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
}
