import Testing

@testable import MeterCore

@Suite struct ReadingParserTests {
    let parser = ReadingParser(maximumKwh: 1000)

    func rejection(_ line: String, parser: ReadingParser? = nil) -> Rejection? {
        do {
            _ = try (parser ?? self.parser).parse(line)
            return nil
        } catch {
            return error
        }
    }

    @Test func parsesEveryKey() throws {
        let reading = try self.parser.parse(
            #"{"meter":"MTR-000123","seq":42,"ts":"2026-11-29T10:15:00.000Z","kwh":0.4213,"status":"fair","fault":"voltage_sag","v":231.2}"#)
        #expect(reading.meter == "MTR-000123")
        #expect(reading.seq == 42)
        #expect(reading.timestampMs == 1_795_947_300_000)
        #expect(reading.kwh == 0.4213)
        #expect(reading.status == .fair)
        #expect(reading.fault == "voltage_sag")
        #expect(reading.voltage == 231.2)
    }

    @Test func optionalKeysDefaultAndNullMeansAbsent() throws {
        let reading = try self.parser.parse(#"{"meter":"m.1_a:b-c","seq":0,"ts":"2026-01-01T00:00:00Z","kwh":0,"status":null,"fault":null,"v":null}"#)
        #expect(reading.status == .good)
        #expect(reading.fault == nil)
        #expect(reading.voltage == nil)
        #expect(reading.seq == 0)
    }

    @Test func ignoresUnknownKeysWhateverTheirValues() throws {
        let reading = try self.parser.parse(
            #"  { "fw" : "1.2.3", "meter":"M1", "extra": {"a":[1,2,{"b":null}], "c":true}, "seq":7, "list":[], "ts":"2026-11-29T10:15:00+01:00", "kwh":1.5e0, "n":-0.5E-3 }  "#
        )
        #expect(reading.meter == "M1")
        #expect(reading.seq == 7)
        #expect(reading.timestampMs == 1_795_943_700_000)
        #expect(reading.kwh == 1.5)
    }

    @Test func decodesEscapesInStrings() throws {
        let reading = try self.parser.parse(
            #"{"meter":"MTR\u002D1","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"note":"caf\u00e9 \ud83d\ude00 \"q\""}"#)
        #expect(reading.meter == "MTR-1")
    }

    @Test func readsNumbersExactly() throws {
        for (text, value) in [
            ("0.1", 0.1), ("123.456", 123.456), ("1e2", 100.0), ("0.30000000000000004", 0.30000000000000004),
            ("999.9999999999999", 999.9999999999999), ("1000", 1000.0), ("0", 0.0), ("2.5E-1", 0.25),
        ] {
            let reading = try self.parser.parse(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":"# + text + "}")
            #expect(reading.kwh == value, "\(text)")
        }
    }

    @Test(arguments: [
        "not json",
        "",
        "[1,2]",
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":NaN}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":Infinity}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":-Infinity}"#,
        #"{"meter":"M","seq":01,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1.,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{'meter':'M','seq':1,'ts':'2026-11-29T10:15:00Z','kwh':1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1} trailing"#,
        #"{"meter":"M","seq":1,"seq":2,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":"\q"}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":"\ud800"}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":tru}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":[1,2}"#,
        #"{"meter":"M" "seq":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":+1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":.5}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1e}"#,
    ])
    func rejectsMalformedJSON(line: String) {
        #expect(self.rejection(line)?.code == .invalidJSON, "\(line)")
    }

    @Test func rejectsInvalidUTF8ControlCharactersAndDeepNesting() {
        var bytes = Array(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":"ab"#.utf8)
        for bad: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0x01], [0xF4, 0x90, 0x80, 0x80]] {
            var line = bytes
            line.append(contentsOf: bad)
            line.append(contentsOf: Array(#""}"#.utf8))
            let result = line.withUnsafeBytes { buffer -> Rejection? in
                do throws(Rejection) {
                    _ = try self.parser.parse(buffer)
                    return nil
                } catch { return error }
            }
            #expect(result?.code == .invalidJSON, "\(bad)")
        }
        bytes = Array(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"x":"#.utf8)
        bytes += Array(repeating: UInt8(ascii: "["), count: 100) + Array(repeating: UInt8(ascii: "]"), count: 100) + [UInt8(ascii: "}")]
        let deep = String(decoding: bytes, as: UTF8.self)
        #expect(self.rejection(deep)?.code == .invalidJSON)
        #expect(self.rejection(deep)?.detail.contains("nesting") == true)
    }

    @Test(arguments: [
        ("meter", #"{"seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#),
        ("seq", #"{"meter":"M","ts":"2026-11-29T10:15:00Z","kwh":1}"#),
        ("ts", #"{"meter":"M","seq":1,"kwh":1}"#),
        ("kwh", #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z"}"#),
        ("meter", "{}"),
    ])
    func rejectsMissingFields(field: String, line: String) {
        let rejection = self.rejection(line)
        #expect(rejection?.code == .missingField)
        #expect(rejection?.detail == "missing \"\(field)\"")
    }

    @Test(arguments: [
        #"{"meter":"","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"MTR 1","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"MTR/1","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"é","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":12,"seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":null,"seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":-1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1.5,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1e3,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":"1","ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":9223372036854775808,"ts":"2026-11-29T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29 10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-02-30T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-13-01T10:15:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T24:00:00Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00+25:00","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00.Z","kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":1764411300,"kwh":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":-0.1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1000.5}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1e400}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":"1"}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":true}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"status":"GOOD"}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"status":"broken"}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"status":1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"fault":""}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"fault":3}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"v":-1}"#,
        #"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1,"v":"230"}"#,
    ])
    func rejectsInvalidFields(line: String) {
        #expect(self.rejection(line)?.code == .invalidField, "\(line)")
    }

    @Test func detailsNameTheProblem() {
        #expect(
            self.rejection(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1000.5}"#)?.detail
                == "kwh 1000.5 exceeds the maximum of 1000.0 per reading")
        #expect(self.rejection(#"{"meter":"M","seq":"x","ts":"2026-11-29T10:15:00Z","kwh":1}"#)?.detail == "seq must be an integer, got a string")
        #expect(
            self.rejection(#"{"meter":"M","seq":1,"ts":"yesterday","kwh":1}"#)?.detail
                == #"ts must be an RFC 3339 date-time with Z or an offset, got "yesterday""#)
        #expect(self.rejection(#"{"meter":"M","seq":1,"seq":1,"ts":"2026-11-29T10:15:00Z","kwh":1}"#)?.detail == #"duplicate key "seq""#)
    }

    @Test func maximumKwhIsConfigurable() throws {
        let strict = ReadingParser(maximumKwh: 5)
        #expect(self.rejection(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":5.01}"#, parser: strict)?.code == .invalidField)
        #expect(try strict.parse(#"{"meter":"M","seq":1,"ts":"2026-11-29T10:15:00Z","kwh":5}"#).kwh == 5)
    }

    @Test func lineRoundTripsThroughTheParser() throws {
        let reading = Reading(meter: "MTR-000001", seq: 9, timestampMs: 1_795_947_300_123, kwh: 0.125, status: .poor, fault: "tamper", voltage: 229.5)
        #expect(reading.line.hasSuffix("\n"))
        #expect(try self.parser.parse(String(reading.line.dropLast())) == reading)
    }
}

@Suite struct RFC3339Tests {
    @Test func parsesOffsetsFractionsAndLeapDays() {
        #expect(RFC3339.parseMilliseconds("1970-01-01T00:00:00Z") == 0)
        #expect(RFC3339.parseMilliseconds("2024-02-29T12:00:00.5Z") == 1_709_208_000_500)
        #expect(RFC3339.parseMilliseconds("2024-02-29T13:30:00.500123+01:30") == 1_709_208_000_500)
        #expect(RFC3339.parseMilliseconds("2024-02-29t12:00:00z") == 1_709_208_000_000)
        #expect(RFC3339.parseMilliseconds("2023-02-29T12:00:00Z") == nil)
        #expect(RFC3339.parseMilliseconds("2024-02-29T12:00:00+0100") == nil)
    }

    @Test func formatsWhatItParses() {
        for ms: Int64 in [0, 1_709_208_000_500, 1_795_947_300_123, 4_102_444_799_999] {
            #expect(RFC3339.parseMilliseconds(RFC3339.format(millisecondsSinceEpoch: ms)) == ms)
        }
        #expect(RFC3339.format(millisecondsSinceEpoch: 1_709_208_000_500) == "2024-02-29T12:00:00.500Z")
    }
}
