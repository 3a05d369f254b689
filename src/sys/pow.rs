//! `pow(3)` for idshift's own binary, so that it does not load `libm.so.6`.
//!
//! The only function of the C maths library idshift's code needs is `pow`, which indicatif's
//! ETA estimator reaches through `f64::powf`. Linking `libm.so.6` for it costs every start-up
//! the mapping and relocation of a shared library: ~3.5% of `idshift exec -- true` in this VM
//! (`cargo bench --bench exec`), whether or not a progress bar is ever drawn. Defining the
//! symbol here resolves it at link time from the `libm` crate (rust-lang's port of musl's
//! maths library, accurate to within 1 ulp), and the linker, which links shared
//! libraries only as needed, drops `libm.so.6`. Should a dependency ever need another function
//! of it, the library is linked again, as before: nothing breaks.
//!
//! `build.rs` keeps the symbol out of the executable's dynamic symbol table (the linker would
//! export it, since the C library's `libm.so.6` on the link line defines it too), so a library
//! loaded at run time that needs `pow` (an NSS module) still gets the C library's own, with
//! its `errno`. Within idshift nothing reads `errno` after a `pow`.

/// `pow(x, y)`: `x` raised to the power `y`, with C's results for special values (it sets no
/// `errno`).
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(test)]
mod tests {
    use super::pow;

    #[test]
    fn c_semantics() {
        assert_eq!(pow(2.0, 10.0), 1024.0);
        assert_eq!(pow(9.0, 0.5), 3.0);
        assert_eq!(pow(f64::NAN, 0.0), 1.0);
        assert_eq!(pow(1.0, f64::NAN), 1.0);
        assert!(pow(-8.0, 1.0 / 3.0).is_nan());
        assert_eq!(pow(0.0, -1.0), f64::INFINITY);
        // indicatif's weight of a sample 15 s old: 0.1^(15/15).
        assert_eq!(pow(0.1, 1.0), 0.1);
        let w = pow(0.1, 7.5 / 15.0);
        assert!((w - 0.316_227_766_016_837_94).abs() <= f64::EPSILON * w);
    }
}
