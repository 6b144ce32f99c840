#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MeterCore

/// The company's four regions; each has its own daily and seasonal load shape.
package enum SimulatedRegion: Int, CaseIterable, Sendable {
    case north, south, east, west

    package var name: String {
        switch self {
        case .north: "North"
        case .south: "South"
        case .east: "East"
        case .west: "West"
        }
    }
}

/// How a household's average power draw moves through the day and the year.
///
/// A night base, a morning and an evening peak; the North heats (bigger winter evenings), the
/// South cools (an afternoon peak in summer), the East runs an hour early and the West an hour
/// late. Weekends are flatter with more daytime use.
package enum LoadCurve {
    /// Relative load (mean about 1) at a moment, for a region.
    package static func factor(atMilliseconds ms: Int64, region: SimulatedRegion) -> Double {
        let seconds = Double(ms) / 1000
        let days = floor(seconds / 86_400)
        var hour = (seconds - days * 86_400) / 3600
        let year = RFC3339.civilFromDays(Int(days)).year
        let dayOfYear = Double(Int(days) - RFC3339.daysFromCivil(year: year, month: 1, day: 1))
        let weekday = (Int(days) + 4) % 7  // 1970-01-01 was a Thursday; 0 = Sunday
        let weekend = weekday == 0 || weekday == 6

        switch region {
        case .east: hour += 1
        case .west: hour -= 1
        default: break
        }
        func bump(_ center: Double, _ width: Double) -> Double {
            var distance = abs(hour - center).truncatingRemainder(dividingBy: 24)
            if distance > 12 { distance = 24 - distance }
            return exp(-(distance * distance) / (2 * width * width))
        }
        let winter = 0.5 + 0.5 * cos(2 * Double.pi * (dayOfYear - 15) / 365)  // 1 in mid-January, 0 in mid-July
        var load = 0.45 + (weekend ? 0.5 : 0.35) * bump(weekend ? 10.5 : 7.5, weekend ? 2.5 : 1.2) + 0.9 * bump(19.5, 2.0)
        if weekend { load += 0.2 * bump(14, 3) }
        switch region {
        case .north: load *= 0.85 + 0.45 * winter
        case .south: load += 0.6 * (1 - winter) * bump(15, 2.5)
        case .east, .west: load *= 0.9 + 0.2 * winter
        }
        return load
    }
}

/// Fault codes meters report, most common first.
package enum MeterFaultCode {
    package static let all = ["voltage_sag", "comm_error", "voltage_swell", "overcurrent", "clock_drift", "tamper"]
    private static let weights = [0.35, 0.25, 0.15, 0.12, 0.08, 0.05]

    static func draw(_ rng: inout SeededGenerator) -> String {
        var u = rng.unit()
        for (code, weight) in zip(all, weights) {
            if u < weight { return code }
            u -= weight
        }
        return all[0]
    }
}

/// One meter's character and measurements: its region, household size, health and noise.
package struct MeterModel: Sendable {
    package let region: SimulatedRegion
    /// Average draw in kW at a load factor of 1: 0.15–1.3 kW, about 100–950 kWh a month.
    package let averageKilowatts: Double
    package private(set) var health: MeterHealth
    private var rng: SeededGenerator

    /// Health mix of the use case: good 70 %, fair 20 %, poor 10 %.
    package static func drawHealth(_ rng: inout SeededGenerator) -> MeterHealth {
        let u = rng.unit()
        return u < 0.7 ? .good : u < 0.9 ? .fair : .poor
    }

    /// Per reading, the chance that a meter's health is drawn afresh (keeps the 0.7/0.2/0.1 mix).
    static let healthChangeRate = 0.002
    /// Per reading, the chance of a fault code, by health.
    static func faultRate(_ health: MeterHealth) -> Double {
        switch health {
        case .good: 0.0005
        case .fair: 0.003
        case .poor: 0.02
        }
    }

    package init(index: Int, seed: UInt64) {
        var rng = SeededGenerator(seed: seed ^ (UInt64(truncatingIfNeeded: index) &* 0xD6E8_FEB8_6659_FD93))
        _ = rng.next()
        self.region = SimulatedRegion(rawValue: Int(rng.next() % 4))!
        self.averageKilowatts = exp(log(0.15) + rng.unit() * (log(1.3) - log(0.15)))
        self.health = Self.drawHealth(&rng)
        self.rng = rng
    }

    /// Energy used between two moments of the meter's clock, with ±15 % noise; kWh to six decimals.
    package mutating func kilowattHours(fromMs start: Int64, toMs end: Int64) -> Double {
        guard end > start else { return 0 }
        // Integrate in steps of at most 15 minutes so a long gap follows the curve.
        let step: Int64 = 900_000
        var energy = 0.0
        var t = start
        while t < end {
            let next = min(end, t + step)
            let middle = t + (next - t) / 2
            energy += self.averageKilowatts * LoadCurve.factor(atMilliseconds: middle, region: self.region) * Double(next - t) / 3_600_000
            t = next
        }
        energy *= max(0.2, 1 + 0.15 * self.rng.normal())
        return (energy * 1_000_000).rounded() / 1_000_000
    }

    /// The next reading: kWh since the previous one, health, now and then a fault code, voltage.
    package mutating func reading(meter: String, seq: Int64, previousMs: Int64, timestampMs: Int64) -> Reading {
        if self.rng.chance(Self.healthChangeRate) { self.health = Self.drawHealth(&self.rng) }
        let kwh = self.kilowattHours(fromMs: previousMs, toMs: timestampMs)
        let fault = self.rng.chance(Self.faultRate(self.health)) ? MeterFaultCode.draw(&self.rng) : nil
        var volts = 230 + 2.5 * self.rng.normal()
        if fault == "voltage_sag" { volts = 196 + 4 * self.rng.normal() }
        if fault == "voltage_swell" { volts = 253 + 2 * self.rng.normal() }
        return Reading(
            meter: meter, seq: seq, timestampMs: timestampMs, kwh: kwh, status: self.health, fault: fault,
            voltage: (volts * 10).rounded() / 10)
    }

    /// A draw for fault decisions, from the meter's own stream.
    package mutating func chance(_ p: Double) -> Bool { self.rng.chance(p) }
    package mutating func unit() -> Double { self.rng.unit() }
}

/// The meters' clock. With a time scale above 1 it runs faster than real time but starts in the
/// past so that it reaches the present when the run ends; it never runs ahead of the real clock,
/// because meterd rejects a `ts` further ahead than its `clock_skew`.
package struct SimulatedClock: Sendable {
    package let startWallMs: Int64
    package let originMs: Int64
    package let timeScale: Double

    /// - Parameter spanSeconds: how long the run is expected to last in real time; unknown (`nil`)
    ///   starts an accelerated clock 30 simulated days in the past.
    package init(startWallMs: Int64, timeScale: Double, spanSeconds: Double?) {
        self.startWallMs = startWallMs
        self.timeScale = timeScale
        if timeScale <= 1 {
            self.originMs = startWallMs
        } else if let spanSeconds {
            self.originMs = startWallMs - Int64((timeScale - 1) * spanSeconds * 1000)
        } else {
            self.originMs = startWallMs - 30 * 86_400_000
        }
    }

    /// The meters' time at a real wall-clock time.
    package func meterTime(atWallMs wall: Int64) -> Int64 {
        guard self.timeScale > 1 else { return wall }
        return min(wall, self.originMs + Int64(Double(wall - self.startWallMs) * self.timeScale))
    }
}
