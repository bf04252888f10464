#include "coordinator.h"

#include <utility>

namespace trainloop::detail {

namespace {

class SingleProcess final : public Coordinator {
 public:
  explicit SingleProcess(std::shared_ptr<distributed::ProcessGroup> group)
      : group_(std::move(group)) {}

  const std::shared_ptr<distributed::ProcessGroup>& group() const override { return group_; }
  int64_t rank() const override { return 0; }
  int64_t world_size() const override { return 1; }
  void distribute(const data::DataSource&, bool) override {}
  void make_whole(const data::DataSource&) override {}
  void make_all_whole() override {}
  void check_metrics(const std::vector<std::shared_ptr<Metric>>&) override {}
  void start_fit(const Model&, int64_t, int64_t) override {}
  void end_fit() override {}
  void start_training_pass(int64_t, int64_t) override {}
  void before_backward(bool, int) override {}
  void after_backward() override {}
  int signal_after_update(int signal) override { return signal; }
  int signal_at_epoch_end(int signal) override { return signal; }
  void combine_metrics(const std::vector<std::shared_ptr<Metric>>&) override {}
  std::vector<std::string> gather(const std::string& mine) override { return {mine}; }
  bool any(bool flag) override { return flag; }

 private:
  std::shared_ptr<distributed::ProcessGroup> group_;
};

}  // namespace

std::unique_ptr<Coordinator> make_single_process(std::shared_ptr<distributed::ProcessGroup> group) {
  return std::make_unique<SingleProcess>(std::move(group));
}

std::unique_ptr<Coordinator> make_coordinator(std::shared_ptr<distributed::ProcessGroup> group,
                                              const distributed::DataParallelOptions& options) {
  if (group != nullptr && group->world_size() > 1) return make_data_parallel(std::move(group), options);
  return make_single_process(std::move(group));
}

}  // namespace trainloop::detail
