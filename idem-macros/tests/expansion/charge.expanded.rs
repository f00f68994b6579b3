impl Payments {
    /// Charges the order once.
    pub async fn charge(
        &self,
        req: ChargeRequest,
        trace: &TraceId,
    ) -> Result<Receipt, PaymentError> {
        let __idem_call = ::idem::__private::Call {
            service: ::idem::__private::shared(&(self.service)),
            scope: ::idem::__private::method_scope::<
                Self,
            >(::core::concat!(::core::module_path!(), "::", "charge")),
            key: ::core::option::Option::Some(
                ::idem::__private::key_text(&(format!("pay:{}", req.order_id))),
            ),
            fingerprint: ::idem::__private::Args::new().arg("req", &req).finish(),
            options: ::idem::__private::CallOptions::new()
                .ttl(::core::time::Duration::from_secs(86400))
                .failure_ttl(::core::time::Duration::from_secs(600)),
        };
        ::idem::__private::run::<
            Result<Receipt, PaymentError>,
            _,
        >(
                __idem_call,
                ::idem::__private::ops::<
                    Result<Receipt, PaymentError>,
                    ::idem::__private::Recorded,
                >(),
                async move {
                    #[allow(
                        unreachable_code,
                        clippy::diverging_sub_expression,
                        clippy::empty_loop,
                        clippy::let_unit_value,
                        clippy::needless_return
                    )]
                    if false {
                        let __idem_fake_return: Result<Receipt, PaymentError> = loop {};
                        return __idem_fake_return;
                    }
                    let receipt = self.gateway.charge(&req, trace).await?;
                    Ok(receipt)
                },
            )
            .await
    }
}
