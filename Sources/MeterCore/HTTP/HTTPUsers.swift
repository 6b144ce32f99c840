#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
// glibc's struct stat may be attributed to Dispatch's C module, depending on module build order;
// importing it keeps MemberImportVisibility satisfied either way (as in JournalLogHandler.swift).
#if canImport(CDispatch)
import CDispatch
#endif
import Foundation
import HummingbirdBcrypt
import Logging
import Synchronization

/// What a dashboard and API user may do (SPEC.md section 10). The HTTP side is read-only today,
/// so an `admin` sees what an all-regions `viewer` sees; the role is kept for what will write.
package enum HTTPRole: String, Sendable, CaseIterable {
    case admin
    case viewer
}

/// The regions a user sees: all of them, or exactly one.
package enum RegionScope: Sendable, Equatable, CustomStringConvertible {
    case all
    case region(String)

    /// `*` for all regions, else the region's name, as in the users file.
    package init(_ text: String) {
        self = text == "*" ? .all : .region(text)
    }

    /// The one region, for a region-scoped user.
    package var region: String? {
        if case .region(let name) = self { return name }
        return nil
    }

    package var description: String { self.region ?? "*" }
}

/// One line of the `http_users` file: `username:role:scope:bcrypt-hash`.
package struct HTTPUser: Sendable, Equatable {
    package var username: String
    package var role: HTTPRole
    package var scope: RegionScope
    /// bcrypt (`$2b$12$…`), never the password itself.
    package var passwordHash: String

    package init(username: String, role: HTTPRole, scope: RegionScope, passwordHash: String) {
        self.username = username
        self.role = role
        self.scope = scope
        self.passwordHash = passwordHash
    }

    /// 1–64 of `A-Z a-z 0-9 . _ @ -`: no colon (the file's separator), nothing a log could misread.
    package static func isValidUsername(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                    || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "@") || byte == UInt8(ascii: "-")
            }
    }

    package static let usernameSyntax = "1-64 of A-Z a-z 0-9 . _ @ -"

    /// The line as the file holds it.
    package var line: String { "\(self.username):\(self.role.rawValue):\(self.scope):\(self.passwordHash)" }

    /// Hashes a password with bcrypt (HummingbirdBcrypt). Slow on purpose: call it off the event loops.
    ///
    /// - Parameter cost: log2 of the rounds; 12 takes a few hundred milliseconds.
    package static func hash(password: String, cost: UInt8 = 12) -> String {
        Bcrypt.hash(password, cost: cost)
    }

    /// Whether `password` is this user's.
    package func verify(password: String) -> Bool {
        Bcrypt.verify(password, hash: self.passwordHash)
    }
}

/// The `http_users` file: `username:role:scope:bcrypt-hash` lines, `#` comments and blank lines
/// ignored. The scope is `*` or a region (which may itself hold colons: the hash never does).
///
/// ```swift
/// var file = try HTTPUserFile.load(path: "/etc/meterd/users")
/// try file.add(HTTPUser(username: "ana", role: .viewer, scope: .region("North"), passwordHash: HTTPUser.hash(password: secret)))
/// try file.write(to: "/etc/meterd/users")
/// ```
package struct HTTPUserFile: Sendable, Equatable {
    package var users: [HTTPUser]

    package init(users: [HTTPUser] = []) {
        self.users = users
    }

    /// Parses the file's text; a bad line throws an error naming `http_users`, the path and the line.
    package static func parse(_ text: String, path: String) throws(ConfigurationError) -> HTTPUserFile {
        var users: [HTTPUser] = []
        var seen: Set<String> = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let place = "\(path):\(index + 1)"
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count >= 4 else {
                throw ConfigurationError(key: "http_users", "\(place): expected username:role:scope:bcrypt-hash")
            }
            let username = String(fields[0])
            guard HTTPUser.isValidUsername(username) else {
                throw ConfigurationError(key: "http_users", "\(place): user name must be \(HTTPUser.usernameSyntax)")
            }
            guard let role = HTTPRole(rawValue: String(fields[1])) else {
                throw ConfigurationError(key: "http_users", "\(place): role must be admin or viewer, got \"\(fields[1])\"")
            }
            let scopeText = fields[2..<(fields.count - 1)].joined(separator: ":")
            guard !scopeText.isEmpty else {
                throw ConfigurationError(key: "http_users", "\(place): scope must be * or a region")
            }
            let scope = RegionScope(scopeText)
            guard role == .viewer || scope == .all else {
                throw ConfigurationError(key: "http_users", "\(place): an admin sees every region; scope must be *")
            }
            let hash = String(fields[fields.count - 1])
            guard Self.isBcryptHash(hash) else {
                throw ConfigurationError(key: "http_users", "\(place): the last field must be a bcrypt hash ($2b$…, 60 characters)")
            }
            guard seen.insert(username).inserted else {
                throw ConfigurationError(key: "http_users", "\(place): user \(username) is listed twice")
            }
            users.append(HTTPUser(username: username, role: role, scope: scope, passwordHash: hash))
        }
        return HTTPUserFile(users: users)
    }

    /// Reads and parses the file.
    package static func load(path: String) throws(ConfigurationError) -> HTTPUserFile {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ConfigurationError(key: "http_users", "\(path): no such file (create it with meterctl user add)")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(key: "http_users", "cannot read \(path) (permission denied?)")
        }
        return try Self.parse(String(decoding: data, as: UTF8.self), path: path)
    }

    static func isBcryptHash(_ text: String) -> Bool {
        text.utf8.count == 60 && (text.hasPrefix("$2a$") || text.hasPrefix("$2b$") || text.hasPrefix("$2y$"))
    }

    /// The file's text: one line per user, in the order they were added.
    package var text: String {
        "# meterd dashboard and API users (meterctl user add|remove|list): username:role:scope:bcrypt-hash\n"
            + self.users.map { $0.line + "\n" }.joined()
    }

    /// Adds a user, or replaces the one of that name (a new password, role or scope).
    package mutating func add(_ user: HTTPUser) {
        if let index = self.users.firstIndex(where: { $0.username == user.username }) {
            self.users[index] = user
        } else {
            self.users.append(user)
        }
    }

    /// Removes a user; whether there was one of that name.
    @discardableResult
    package mutating func remove(username: String) -> Bool {
        let before = self.users.count
        self.users.removeAll { $0.username == username }
        return self.users.count < before
    }

    /// Writes the file atomically. A new file is readable by its owner and group only (it holds
    /// password hashes); a replaced one keeps its owner, group and mode (`root:meterd 0640`).
    package func write(to path: String) throws(FileWriteError) {
        let existing = try? FileManager.default.attributesOfItem(atPath: path)
        let owner = existing.flatMap { attributes -> (uid_t, gid_t, mode_t)? in
            guard let user = attributes[.ownerAccountID] as? NSNumber, let group = attributes[.groupOwnerAccountID] as? NSNumber,
                let mode = attributes[.posixPermissions] as? NSNumber
            else { return nil }
            return (user.uint32Value, group.uint32Value, mode_t(mode.uint32Value))
        }
        try AtomicFile.write(Array(self.text.utf8), to: path, mode: 0o640, owner: owner)
    }
}

/// The users meterd knows, read from `http_users` and read again when the file changes
/// (`meterctl user add|remove` while meterd runs): a removed user's sessions end at their next
/// request, a changed scope applies at once.
package final class HTTPUserDirectory: Sendable {
    package let path: String
    private let logger: Logger
    private struct State {
        var users: [String: HTTPUser]
        /// The file's identity when it was read: inode, size, modification time.
        var stamp: [Int]
    }
    private let state: Mutex<State>

    /// Reads the file; a missing or malformed one throws an error naming `http_users`.
    package init(path: String, logger: Logger) throws(ConfigurationError) {
        self.path = path
        self.logger = logger
        let stamp = Self.stamp(path)
        let file = try HTTPUserFile.load(path: path)
        self.state = Mutex(State(users: Dictionary(uniqueKeysWithValues: file.users.map { ($0.username, $0) }), stamp: stamp))
    }

    /// How many users there are now.
    package var count: Int {
        self.refresh()
        return self.state.withLock { $0.users.count }
    }

    /// The user of that name as the file says now, or `nil`.
    package func user(named name: String) -> HTTPUser? {
        self.refresh()
        return self.state.withLock { $0.users[name] }
    }

    /// Re-reads the file when it changed. A file that no longer parses leaves the last good
    /// users in place (and says so in the log): a typo must not lock everyone out.
    private func refresh() {
        let stamp = Self.stamp(self.path)
        guard self.state.withLock({ $0.stamp != stamp }) else { return }
        do {
            let file = try HTTPUserFile.load(path: self.path)
            let users = Dictionary(uniqueKeysWithValues: file.users.map { ($0.username, $0) })
            self.state.withLock { $0 = State(users: users, stamp: stamp) }
            self.logger.info("HTTP users reloaded", metadata: ["http.users": "\(users.count)", "http.users_file": "\(self.path)"])
        } catch {
            self.state.withLock { $0.stamp = stamp }
            self.logger.error("HTTP users file unusable; keeping the users read before", metadata: ["error": "\(error)"])
        }
    }

    private static func stamp(_ path: String) -> [Int] {
        var info = stat()
        guard stat(path, &info) == 0 else { return [] }
        // ctime too: a chown or chmod that makes the file readable changes nothing else.
        return [
            Int(info.st_ino), Int(info.st_size), Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_ctim.tv_sec),
            Int(info.st_ctim.tv_nsec),
        ]
    }
}
