
#[cfg(test)]
mod tests {
    use super::value_header;

    #[test]
    fn a_value_line_gives_key_flags_and_length() {
        assert_eq!(value_header("client-3 3 17").unwrap(), ("client-3".to_owned(), 3, 17));
    }

    #[test]
    fn a_malformed_value_line_is_an_error_naming_it() {
        for bad in ["k 1", "k 1 2 3", "k x 2", "k 1 -2", ""] {
            let e = value_header(bad).unwrap_err().to_string();
            assert!(e.contains("VALUE"), "{bad:?}: {e}");
        }
    }
}
