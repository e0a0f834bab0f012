fn main() -> std::process::ExitCode {
    ablate::cli::main()
}
