fn main() {
    eprintln!("husk: not built yet");
    std::process::exit(1);
}
