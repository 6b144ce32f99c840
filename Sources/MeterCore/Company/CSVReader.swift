import Foundation

/// A problem with one row of a company file, reported as `file:line: reason`.
package struct CompanyDataError: Error, CustomStringConvertible, Equatable, Sendable {
    package var file: String
    /// 1-based line of the file; 0 when the problem is the file as a whole.
    package var line: Int
    package var reason: String

    package init(file: String, line: Int, _ reason: String) {
        self.file = file
        self.line = line
        self.reason = reason
    }

    package var description: String { self.line > 0 ? "\(self.file):\(self.line): \(self.reason)" : "\(self.file): \(self.reason)" }
}

/// Reads a comma-separated file with a header row (RFC 4180 quoting, `\n` or `\r\n` line ends).
///
/// Rows come out as arrays of the expected columns in the expected order, whatever order the header has.
struct CSVReader {
    let file: String
    private let bytes: [UInt8]
    private var position = 0
    private var line = 0
    /// Where the record last read began: a quoted field may carry line breaks, and a reader
    /// looks for a bad row where it starts.
    private var recordLine = 0
    private var columnIndex: [Int] = []
    /// Fields in the header: a row with more was cut or shifted somewhere.
    private var headerCount = 0
    private var fields: [String] = []

    /// Opens the file and checks that the header names every expected column.
    init(path: String, columns: [String]) throws(CompanyDataError) {
        let name = (path as NSString).lastPathComponent
        self.file = name
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CompanyDataError(file: name, line: 0, "cannot read \(path)")
        }
        self.bytes = [UInt8](data)
        // A UTF-8 byte-order mark, as spreadsheets write it.
        if self.bytes.starts(with: [0xEF, 0xBB, 0xBF]) { self.position = 3 }
        guard let header = try self.nextRecord() else {
            throw CompanyDataError(file: name, line: 1, "empty file: expected the header \(columns.joined(separator: ","))")
        }
        let names = header.map { $0.trimmingCharacters(in: .whitespaces) }
        self.headerCount = names.count
        for column in columns {
            guard let index = names.firstIndex(of: column) else {
                throw CompanyDataError(file: name, line: 1, "missing column \(column) (expected \(columns.joined(separator: ",")))")
            }
            self.columnIndex.append(index)
        }
    }

    /// Fraction of the file read so far, for progress.
    var progress: Double { self.bytes.isEmpty ? 1 : Double(self.position) / Double(self.bytes.count) }

    /// Size of the file in bytes.
    var size: Int { self.bytes.count }

    /// The line number where the row last returned begins.
    var currentLine: Int { self.recordLine }

    /// The next data row's expected columns, or `nil` at the end. Blank lines are skipped.
    mutating func next() throws(CompanyDataError) -> [String]? {
        while let record = try self.nextRecord() {
            if record.count == 1 && record[0].isEmpty { continue }
            guard let highest = self.columnIndex.max(), record.count > highest else {
                throw CompanyDataError(file: self.file, line: self.recordLine, "expected \(self.columnIndex.count) fields, found \(record.count)")
            }
            guard record.count <= self.headerCount else {
                throw CompanyDataError(file: self.file, line: self.recordLine, "\(record.count) fields, but the header names \(self.headerCount)")
            }
            return self.columnIndex.map { record[$0] }
        }
        return nil
    }

    /// Splits one record into fields.
    private mutating func nextRecord() throws(CompanyDataError) -> [String]? {
        guard self.position < self.bytes.count else { return nil }
        self.line += 1
        self.fields.removeAll(keepingCapacity: true)
        let startLine = self.line
        self.recordLine = startLine
        var index = self.position
        let count = self.bytes.count
        try self.bytes.withUnsafeBufferPointer { (buffer) throws(CompanyDataError) in
            while true {
                if index < count && buffer[index] == UInt8(ascii: "\"") {
                    index += 1
                    var value: [UInt8] = []
                    while true {
                        guard index < count else {
                            throw CompanyDataError(file: self.file, line: startLine, "unterminated quoted field")
                        }
                        let byte = buffer[index]
                        if byte == UInt8(ascii: "\"") {
                            if index + 1 < count && buffer[index + 1] == UInt8(ascii: "\"") {
                                value.append(byte)
                                index += 2
                                continue
                            }
                            index += 1
                            break
                        }
                        if byte == 0x0A { self.line += 1 }
                        value.append(byte)
                        index += 1
                    }
                    self.fields.append(try self.text(value, line: startLine))
                } else {
                    let start = index
                    while index < count, buffer[index] != UInt8(ascii: ","), buffer[index] != 0x0A, buffer[index] != UInt8(ascii: "\"") { index += 1 }
                    if index < count && buffer[index] == UInt8(ascii: "\"") {
                        throw CompanyDataError(file: self.file, line: startLine, "stray quote inside an unquoted field")
                    }
                    var end = index
                    if end > start && (index >= count || buffer[index] == 0x0A) && buffer[end - 1] == 0x0D { end -= 1 }
                    self.fields.append(try self.text(UnsafeBufferPointer(rebasing: buffer[start..<end]), line: startLine))
                }
                if index >= count { break }
                let separator = buffer[index]
                index += 1
                if separator == 0x0A { break }
                if separator == 0x0D, index < count, buffer[index] == 0x0A {
                    index += 1
                    break
                }
                if separator != UInt8(ascii: ",") {
                    throw CompanyDataError(file: self.file, line: startLine, "unexpected character after a quoted field")
                }
            }
        }
        self.position = index
        return self.fields
    }

    /// A field's text; bytes that are not UTF-8 (a file saved as Latin-1) are refused rather than
    /// stored as replacement characters.
    private func text(_ bytes: some Collection<UInt8>, line: Int) throws(CompanyDataError) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CompanyDataError(
                file: self.file, line: line, "field \(self.fields.count + 1) is not valid UTF-8 (save the file as UTF-8)")
        }
        return text
    }
}

/// A calendar date (and optional time) of the company's files: `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`.
package struct CompanyDate: Sendable, Equatable, Comparable {
    package var year: Int
    package var month: Int
    package var day: Int
    package var secondOfDay: Int

    package init(year: Int, month: Int, day: Int, secondOfDay: Int = 0) {
        self.year = year
        self.month = month
        self.day = day
        self.secondOfDay = secondOfDay
    }

    /// Parses either accepted form; `nil` for anything else, impossible dates included.
    package init?(_ text: String) {
        let utf8 = Array(text.utf8)
        guard utf8.count == 10 || utf8.count == 19 else { return nil }
        func number(_ start: Int, _ width: Int) -> Int? {
            var value = 0
            for index in start..<(start + width) {
                let byte = utf8[index]
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        guard let year = number(0, 4), utf8[4] == UInt8(ascii: "-"), let month = number(5, 2), utf8[7] == UInt8(ascii: "-"),
            let day = number(8, 2), (1...12).contains(month), day >= 1, day <= RFC3339.daysInMonth(year: year, month: month)
        else { return nil }
        var seconds = 0
        if utf8.count == 19 {
            guard utf8[10] == UInt8(ascii: " ") || utf8[10] == UInt8(ascii: "T"), let hour = number(11, 2), utf8[13] == UInt8(ascii: ":"),
                let minute = number(14, 2), utf8[16] == UInt8(ascii: ":"), let second = number(17, 2),
                hour < 24, minute < 60, second < 60
            else { return nil }
            seconds = hour * 3600 + minute * 60 + second
        }
        self.init(year: year, month: month, day: day, secondOfDay: seconds)
    }

    /// The calendar month, `yyyymm`.
    package var monthKey: Int { self.year * 100 + self.month }

    /// Days since 1970-01-01, with the time of day as a fraction: differences are durations in days.
    package var dayNumber: Double {
        Double(RFC3339.daysFromCivil(year: self.year, month: self.month, day: self.day)) + Double(self.secondOfDay) / 86_400
    }

    /// `YYYY-MM-DD`, or `YYYY-MM-DD HH:MM:SS` when it has a time.
    package var text: String {
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let date = "\(pad(self.year, 4))-\(pad(self.month, 2))-\(pad(self.day, 2))"
        guard self.secondOfDay > 0 else { return date }
        return date + " \(pad(self.secondOfDay / 3600, 2)):\(pad(self.secondOfDay % 3600 / 60, 2)):\(pad(self.secondOfDay % 60, 2))"
    }

    package static func < (lhs: CompanyDate, rhs: CompanyDate) -> Bool {
        (lhs.year, lhs.month, lhs.day, lhs.secondOfDay) < (rhs.year, rhs.month, rhs.day, rhs.secondOfDay)
    }
}
