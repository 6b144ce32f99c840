import ArgumentParser
import Foundation
import MeterCore

/// `meterctl user add|remove|list`: manages the `http_users` file (SPEC.md section 10).
struct UserCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user",
        abstract: "Manages the dashboard and API users in the http_users file.",
        discussion: """
            The file is --file, else $METERD_HTTP_USERS, else /etc/meterd/users. Lines are \
            username:role:scope:bcrypt-hash; meterd reads the file again when it changes, so a removed \
            user's sessions end at their next request. Passwords are read from the terminal (asked \
            twice, not shown) or, when stdin is not a terminal, from its first line; never from the \
            command line, where other users could see them in the process list.
            """,
        subcommands: [Add.self, Remove.self, List.self])

    struct FileOption: ParsableArguments {
        @Option(help: ArgumentHelp("The http_users file.", valueName: "path"))
        var file: String?

        var path: String {
            self.file ?? ProcessInfo.processInfo.environment["METERD_HTTP_USERS"].flatMap { $0.isEmpty ? nil : $0 } ?? "/etc/meterd/users"
        }

        /// The file's users; none when it does not exist yet.
        func load() -> HTTPUserFile {
            guard FileManager.default.fileExists(atPath: self.path) else { return HTTPUserFile() }
            do {
                return try HTTPUserFile.load(path: self.path)
            } catch {
                ConnectionOptions.fail(error.message, code: 1)
            }
        }

        func save(_ file: HTTPUserFile) {
            do {
                try file.write(to: self.path)
            } catch {
                ConnectionOptions.fail("\(error)", code: 1)
            }
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Adds a user, or gives an existing one a new password, role and scope.")

        @Argument(help: ArgumentHelp("User name (\(HTTPUser.usernameSyntax)).", valueName: "name"))
        var username: String
        @Option(help: "admin or viewer (default viewer).")
        var role: String = "viewer"
        @Option(help: ArgumentHelp("* for every region (default), or the one region a viewer sees.", valueName: "region"))
        var scope: String = "*"
        @Option(help: ArgumentHelp("bcrypt cost: log2 of its rounds, 4 to 31 (default 12, a few hundred milliseconds per login).", valueName: "n"))
        var cost: UInt8 = 12
        @OptionGroup var file: FileOption

        func validate() throws {
            guard HTTPUser.isValidUsername(self.username) else {
                throw ValidationError("User name must be \(HTTPUser.usernameSyntax).")
            }
            guard let role = HTTPRole(rawValue: self.role) else { throw ValidationError("Role must be admin or viewer.") }
            guard !self.scope.isEmpty, !self.scope.contains("\n") else { throw ValidationError("Scope must be * or a region name.") }
            guard role == .viewer || self.scope == "*" else {
                throw ValidationError("An admin sees every region: leave --scope out, or make the user a viewer.")
            }
            guard (4...31).contains(self.cost) else { throw ValidationError("Cost must be from 4 to 31.") }
        }

        func run() throws {
            let password = Self.readPassword(for: self.username)
            guard password.count >= 8 else { ConnectionOptions.fail("the password must have at least 8 characters", code: 1) }
            var users = self.file.load()
            let existed = users.users.contains { $0.username == self.username }
            users.add(
                HTTPUser(
                    username: self.username, role: HTTPRole(rawValue: self.role)!, scope: RegionScope(self.scope),
                    passwordHash: HTTPUser.hash(password: password, cost: self.cost)))
            self.file.save(users)
            print(
                "\(existed ? "Updated" : "Added") \(self.username) (\(self.role), \(self.scope == "*" ? "all regions" : "region \(self.scope)")) in \(self.file.path)"
            )
        }

        /// The password: twice from the terminal without echo, else the first line of stdin.
        static func readPassword(for username: String) -> String {
            guard isatty(0) == 1 else {
                guard let line = readLine(strippingNewline: true) else {
                    ConnectionOptions.fail("no password on stdin (give it on the first line)", code: 1)
                }
                return line
            }
            let first = self.readHidden("Password for \(username): ")
            let second = self.readHidden("Again: ")
            guard first == second else { ConnectionOptions.fail("the passwords differ", code: 1) }
            return first
        }

        private static func readHidden(_ prompt: String) -> String {
            // getpass turns echo off on the terminal (/dev/tty) while the password is typed.
            guard let raw = getpass(prompt) else { ConnectionOptions.fail("cannot read a password from the terminal", code: 1) }
            return String(cString: raw)
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Removes a user; their sessions end at their next request.")

        @Argument(help: ArgumentHelp("User name.", valueName: "name"))
        var username: String
        @OptionGroup var file: FileOption

        func run() throws {
            var users = self.file.load()
            guard users.remove(username: self.username) else {
                ConnectionOptions.fail("no user \(self.username) in \(self.file.path)", code: 1)
            }
            self.file.save(users)
            print("Removed \(self.username) from \(self.file.path)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lists the users with their role and scope (never their hashes).")

        @OptionGroup var file: FileOption
        // meterctl's own options carry --json (it is parsed there whatever subcommand it follows).
        @OptionGroup var output: ConnectionOptions

        func run() throws {
            let users = self.file.load().users
            if self.output.json {
                let rows = users.map { user in
                    JSONValue.object([
                        ("user", .string(user.username)), ("role", .string(user.role.rawValue)), ("scope", .string(user.scope.description)),
                    ])
                }
                print(JSONValue.array(rows).serialized)
                return
            }
            guard !users.isEmpty else {
                print("No users in \(self.file.path)")
                return
            }
            let width = max(4, users.map(\.username.count).max() ?? 4)
            print("USER".padding(toLength: width, withPad: " ", startingAt: 0) + "  ROLE    SCOPE")
            for user in users {
                print(
                    user.username.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                        + user.role.rawValue.padding(toLength: 6, withPad: " ", startingAt: 0) + "  " + user.scope.description)
            }
        }
    }
}
